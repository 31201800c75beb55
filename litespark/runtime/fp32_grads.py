"""``link_fp32_main_grads``: Transformer Engine writes weight gradients straight into DeepSpeed's fp32 buffers.

With ``precision.fp32_grad_accumulation`` ZeRO-1 runs as DeepSpeed's ``BF16_Optimizer``, which keeps
one flat fp32 gradient buffer per parameter group (whole on every data-parallel rank: it all-reduces
them, then steps its own fp32 partition).  Left alone, autograd produces a bf16 ``.grad`` per weight
and DeepSpeed adds it into that buffer.  Transformer Engine's linears can instead accumulate the
weight-gradient GEMM's fp32 output into a tensor the weight carries as ``main_grad``
(``fuse_wgrad_accumulation``, what Megatron-Core's own DDP uses): pointing ``main_grad`` at the
weight's view of DeepSpeed's buffer removes the bf16 gradient, its zeroing and the conversion pass,
and keeps the gradient in fp32 from the GEMM on.

TransformerConfig's ``gradient_accumulation_fusion`` stays off: it would also switch Megatron's own
output layer to APEX's fused kernel.  The TE modules read ``fuse_wgrad_accumulation`` at each
forward, so it is set on them here, after the engine exists.

Those weights then have no ``.grad``, so DeepSpeed does not know that its buffer holds their
gradient, and its gradient norm and clipping skip them.  :meth:`Fp32GradLink.mark` tells it;
``litespark.training.step.train_step`` calls it after every backward.

The first backward of each step *writes* the linked gradients instead of adding them to zeros (TE's
``overwrite_main_grad`` on the weight: the GEMM runs with beta 0 and never reads the buffer), so
DeepSpeed's end-of-step zeroing (``clear_hp_grads``) is narrowed to the gradients that still arrive
by addition (the embedding, a BF16 output layer and the norm weights) instead of the whole buffer.
``mark`` switches the later micro-batches back to adding.  This relies on every
linked weight taking part in every step's first micro-batch, which holds for the GPT models trained
here (no pipeline stages, no frozen TE linears: frozen ones are never linked).  The first step
checks it: the link watches which linked modules run forward until the first ``mark``, which raises
if one did not (its buffer would carry the previous step's gradient into the next).  A model whose
participation changes from step to step (mixture of experts, layer drop) is beyond that check and
must keep ``precision.fp32_grad_accumulation`` off.

The DeepSpeed attributes used (``bf16_groups``, ``fp32_groups_gradients``,
``fp32_groups_has_gradients``, ``clear_hp_grads``) are checked by ``tests/runtime/test_fp32_grads.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from litespark.log import get_logger

log = get_logger(__name__)

# cuBLAS writes GEMM outputs at 16-byte aligned addresses.
_ALIGNMENT_BYTES = 16


@dataclass
class Fp32GradLink:
    """The weights whose gradients TE accumulates into ``optimizer``'s fp32 buffers."""

    optimizer: Any
    """DeepSpeed's ``BF16_Optimizer``."""
    slots: list[tuple[int, int]] = field(default_factory=list)
    """(parameter group, index in group) of each linked weight in ``optimizer.bf16_groups``."""
    weights: list[Any] = field(default_factory=list)
    """The linked weights, in ``slots`` order."""
    names: list[str] = field(default_factory=list)
    """The linked weights' parameter names, in ``slots`` order."""
    added: list[torch.Tensor] = field(default_factory=list)
    """The other fp32 gradient views, which DeepSpeed adds into: what the step zeroes."""
    numel: int = 0
    _ran: set[int] = field(default_factory=set)
    _watch: list = field(default_factory=list)
    """Forward pre-hooks on the linked modules until the first :meth:`mark` (see :meth:`watch`)."""

    def watch(self, modules: list[torch.nn.Module]) -> None:
        """Record which of ``modules`` (the linked weights' modules, in ``slots`` order) run forward
        until the first :meth:`mark`, which checks that all of them did."""
        self._ran.clear()
        self._watch = [
            m.register_forward_pre_hook(lambda module, args, i=i: self._ran.add(i)) for i, m in enumerate(modules)
        ]

    def mark(self) -> None:
        """Record that the linked weights' gradients are in the fp32 buffers (after a backward); the
        next backward of this step adds to them."""
        if self._watch:
            self._check_all_ran()
        has = self.optimizer.fp32_groups_has_gradients
        for i, j in self.slots:
            has[i][j] = True
        self._overwrite(False)

    def _check_all_ran(self) -> None:
        for hook in self._watch:
            hook.remove()
        self._watch = []
        idle = [name for i, name in enumerate(self.names) if i not in self._ran]
        if idle:
            raise RuntimeError(
                f"precision.fp32_grad_accumulation: {len(idle)} linked TE weight(s) took no part in the first "
                f"micro-batch ({', '.join(idle[:3])}{', ...' if len(idle) > 3 else ''}); the first backward of "
                "each step overwrites the linked gradients, so theirs would go stale: set "
                "precision.fp32_grad_accumulation=false for this model"
            )

    def clear_hp_grads(self) -> None:
        """DeepSpeed's ``clear_hp_grads`` minus the zeroing of the linked gradients: the next
        backward overwrites those.  Installed on the optimizer by :func:`link_fp32_main_grads`."""
        if self.added:
            torch._foreach_zero_(self.added)
        for i, group in enumerate(self.optimizer.fp32_groups_gradients):
            self.optimizer.fp32_groups_has_gradients[i] = [False] * len(group)
        self._overwrite(True)

    def _overwrite(self, on: bool) -> None:
        for w in self.weights:
            w.overwrite_main_grad = on


def fusable_weights(model: torch.nn.Module) -> list[tuple[str, Any, torch.nn.Parameter]]:
    """(name, module, weight) of every TE linear in ``model`` that can accumulate into ``main_grad``:
    modules with TE's ``fuse_wgrad_accumulation`` switch and a single weight tensor."""
    found = []
    for name, module in model.named_modules():
        if not hasattr(module, "fuse_wgrad_accumulation") or getattr(module, "weight_names", None) != ["weight"]:
            continue
        weight = module.weight
        if weight.requires_grad:
            found.append((f"{name}.weight", module, weight))
    return found


def link_fp32_main_grads(model: torch.nn.Module, optimizer) -> Fp32GradLink:
    """Point each fusable TE weight's ``main_grad`` at its view of ``optimizer``'s fp32 gradient buffer
    and switch its module to accumulate there.  ``optimizer`` is DeepSpeed's ``BF16_Optimizer`` with
    fp32 gradients (``data_types.grad_accum_dtype: fp32``)."""
    groups = getattr(optimizer, "bf16_groups", None)
    grads = getattr(optimizer, "fp32_groups_gradients", None)
    if (
        groups is None
        or grads is None
        or not hasattr(optimizer, "fp32_groups_has_gradients")
        or not callable(getattr(optimizer, "clear_hp_grads", None))
    ):
        raise RuntimeError(
            f"precision.fp32_grad_accumulation needs DeepSpeed's BF16_Optimizer, got {type(optimizer).__name__}"
        )
    where = {id(p): (i, j) for i, group in enumerate(groups) for j, p in enumerate(group)}
    link = Fp32GradLink(optimizer)
    modules = []
    skipped = []
    for name, module, weight in fusable_weights(model):
        slot = where.get(id(weight))
        if slot is None:
            raise RuntimeError(f"{name} is not among the optimizer's parameters")
        buffer = grads[slot[0]][slot[1]]
        if buffer.dtype != torch.float32 or buffer.data_ptr() % _ALIGNMENT_BYTES:
            skipped.append(name)  # stays on DeepSpeed's bf16 path
            continue
        weight.main_grad = buffer.view(weight.shape)  # type: ignore[attr-defined]  # read by TE's GEMMs
        module.fuse_wgrad_accumulation = True
        link.slots.append(slot)
        link.weights.append(weight)
        link.names.append(name)
        modules.append(module)
        link.numel += weight.numel()
    linked = set(link.slots)
    link.added = [g for i, group in enumerate(grads) for j, g in enumerate(group) if (i, j) not in linked]
    # The buffers start zeroed; from here on the first backward of a step writes the linked ones.
    optimizer.clear_hp_grads = link.clear_hp_grads
    link.clear_hp_grads()
    link.watch(modules)
    if not link.slots and not skipped:
        log.info(
            "fp32 gradient accumulation: no TE linears (torch backend); DeepSpeed adds the bf16 gradients "
            "into its fp32 buffers"
        )
        return link
    log.info(
        "fp32 gradient accumulation: %d TE weights (%.2fB parameters) accumulate into DeepSpeed's fp32 buffers%s",
        len(link.slots),
        link.numel / 1e9,
        f"; {len(skipped)} unaligned left on the bf16 path (e.g. {skipped[0]})" if skipped else "",
    )
    return link
