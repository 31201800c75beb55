"""``capture_layer_graphs``: replay each transformer layer's training forward and backward as CUDA graphs.

Why: at small micro-batches an FP8 layer is ~100 short kernels (GEMMs, casts, amax updates, norms,
RoPE, attention) and the host cannot issue them as fast as the GPU finishes them, so the GPU sits
idle between kernels (docs/performance.md).  A graph replays a whole layer's kernels with one launch.

How: Transformer Engine's ``make_graphed_callables`` captures one forward and one backward graph per
layer (all layers share one memory pool; forwards captured first, backwards in reverse, the order
they run in).  It is called the way Megatron-Core's own TE graph helper calls it, with a one-chunk,
one-micro-batch schedule (``_order=[1, -1]``) so that TE can reuse buffers across layers: each
layer's output, output gradient and weight gradients are handed back to the pool once the graphs
that run later no longer need them, instead of one static set per layer.  The pool is private:
the optimizer step cannot reuse the captured layers' activation memory as it does the eager layers',
which is why ``parallel.zero_sub_group_size`` keeps the step's buffers small;
``kernels.cuda_graph_layers`` captures only the first N layers where memory is tighter still.

TE handles FP8: the weight casts inside the graph read a device flag that says whether this is a
step's first micro-batch (the FP8 weight cache), and the delayed-scaling amax and
scale updates stay outside the graph, as in eager mode.  Each ``TransformerLayer`` keeps its
parameters; the graph's backward hands their gradients to autograd, so DeepSpeed's
post-accumulate-grad hooks fire as before (the first micro-batch's gradients are copied out of the
graph's buffers, see ``_own_first_gradient``).  Capture must come *after* ``deepspeed.initialize``,
which moves the bf16 weights into its flat buffers: a graph bakes in the addresses it saw.

A captured layer replays only for calls that match the capture: training mode with autograd on,
the captured ``[seq, micro-batch, hidden]`` input, causal attention without a mask, RoPE.  Any other
call (evaluation, another shape) runs the layer's ordinary forward.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any

import torch

from litespark.config import ConfigError, RunPlan
from litespark.log import get_logger

log = get_logger(__name__)

# Keyword arguments TransformerBlock passes to every layer that a captured layer requires to be None
# (the graph was captured without them).
_MUST_BE_NONE = (
    "attention_mask",
    "context",
    "context_mask",
    "rotary_pos_cos",
    "rotary_pos_sin",
    "rotary_pos_cos_sin",
    "attention_bias",
    "inference_context",
    "packed_seq_params",
    "sequence_len_offset",
    "padding_mask",
)


class _CaptureTarget(torch.nn.Module):
    """What the graph records: one layer's forward with TransformerBlock's fixed arguments.

    A module (not a function) so that TE graphs its parameters' gradients and registers its FP8
    scaling state; ``eager`` is the layer's original bound ``forward``.
    """

    def __init__(self, layer: torch.nn.Module, eager: Callable):
        super().__init__()
        self.layer = layer
        self._eager = eager

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor, **_ignored) -> torch.Tensor:
        output, _context = self._eager(hidden_states=hidden_states, attention_mask=None, rotary_pos_emb=rotary_pos_emb)
        return output


class _ReplayingForward:
    """Installed as ``layer.forward``: replays the graph for matching calls, else runs ``eager``."""

    def __init__(self, layer, graphed: Callable, eager: Callable, hidden_shape: torch.Size, rope_shape: torch.Size):
        self.layer, self.graphed, self.eager = layer, graphed, eager
        self.hidden_shape, self.rope_shape = hidden_shape, rope_shape
        # Megatron's TE linears carry the FP8 weight-cache flag; the graph reads it as an argument.
        self.flagged = [m for m in layer.modules() if hasattr(m, "is_first_microbatch")]
        self.replays = 0
        self.fallbacks = 0

    def mismatch(self, hidden_states: torch.Tensor, kwargs: dict) -> str | None:
        """Why this call cannot replay the graph (None when it can)."""
        if not (self.layer.training and torch.is_grad_enabled()):
            return "not training"
        if hidden_states.shape != self.hidden_shape:
            return f"input shape {tuple(hidden_states.shape)} != captured {tuple(self.hidden_shape)}"
        rope = kwargs.get("rotary_pos_emb")
        if rope is None or rope.shape != self.rope_shape:
            return "rotary_pos_emb differs from the capture"
        given = [k for k in _MUST_BE_NONE if kwargs.get(k) is not None]
        if given:
            return f"{', '.join(given)} given (captured without)"
        return None

    def __call__(self, hidden_states=None, *args, **kwargs):
        why = None if args else self.mismatch(hidden_states, kwargs)
        if args or why is not None:
            if self.layer.training and torch.is_grad_enabled():  # a training call the graph should have served
                if self.fallbacks == 0:
                    log.warning(
                        "layer %d: CUDA graph not used (%s); running eagerly",
                        getattr(self.layer, "layer_number", -1),
                        why or "positional arguments",
                    )
                self.fallbacks += 1
            return self.eager(hidden_states, *args, **kwargs)
        first = any(bool(m.is_first_microbatch) for m in self.flagged)
        output = self.graphed(hidden_states, kwargs["rotary_pos_emb"], is_first_microbatch=first)
        for m in self.flagged:  # what the eager TE linears do after each forward
            m.is_first_microbatch = False
        self.replays += 1
        return output, kwargs.get("context")


def _fp8_arguments(config) -> dict:
    """``make_graphed_callables`` FP8 keywords from Megatron's TransformerConfig (as its FP8 context uses)."""
    if not config.fp8:
        return {"enabled": False}
    from megatron.core import parallel_state
    from megatron.core.fp8_utils import get_fp8_recipe

    return {
        "enabled": True,
        "recipe": get_fp8_recipe(config),
        "cache_quantized_params": True,
        "amax_reduction_group": parallel_state.get_amax_reduction_group(
            with_context_parallel=True, tp_only_amax_red=config.tp_only_amax_red
        ),
    }


def _own_first_gradient(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Tensor hook on a captured layer's weight: the graph's backward hands autograd a gradient
    buffer in the graph pool, and ``AccumulateGrad`` would adopt that very buffer as ``param.grad``
    when ``.grad`` is None; the next replay (of this layer, or of an earlier layer's backward, which
    reuses the buffer) then overwrites it, and accumulation adds the buffer to itself (2 x g2 instead
    of g1 + g2).  A copy for the first micro-batch of each step is enough: later ones are added in
    place.  Autograd runs ``AccumulateGrad`` nodes before any other ready node, so the copy or the
    addition is queued on the stream before the next graph replay can overwrite the buffer."""
    return grad.clone() if param.grad is None else grad


def release_retained_grad_nodes(model: torch.nn.Module) -> None:
    """Drop DeepSpeed's autograd references to the parameters' gradient-accumulation nodes.

    ZeRO 1/2 keeps, per parameter, ``_hp_mapping.lp_fragment``: a slice of the bf16 weight taken with
    autograd on, whose ``grad_fn`` keeps the weight's ``AccumulateGrad`` node alive for the whole run.
    That node remembers the stream it was created on (the default stream); during capture autograd
    would make that stream wait on the capture stream, which invalidates the capture.  A detached
    slice shares the same storage, so DeepSpeed reads and writes the same numbers.  Raises
    RuntimeError, naming a parameter, if some other holder still keeps a node alive.
    """

    def grad_node(p: torch.Tensor) -> Any:
        view: Any = p.expand_as(p)  # a view's grad_fn leads to the parameter's AccumulateGrad node
        return view.grad_fn.next_functions[0][0]

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        mapping: Any = getattr(p, "_hp_mapping", None)
        if isinstance(getattr(mapping, "lp_fragment", None), torch.Tensor):
            mapping.lp_fragment = mapping.lp_fragment.detach()  # no local may keep the old slice
    # A node that outlives this marking (nothing here keeps one) is held by someone else.
    mark = object()
    for p in params:
        grad_node(p).metadata["litespark_probe"] = mark
    gc.collect()
    held = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and grad_node(p).metadata.get("litespark_probe") is mark
    ]
    if held:
        raise RuntimeError(
            f"kernels.cuda_graphs: the gradient node of {len(held)} parameters (e.g. {held[0]}) is kept "
            "alive outside autograd; capturing would fail (cudaErrorStreamCaptureInvalidated)"
        )


def capture_layer_graphs(model: Any, plan: RunPlan, warmup_iters: int = 3) -> list[_ReplayingForward]:
    """Capture the first ``plan.cuda_graph_layers`` decoder layers of ``model`` (a GPTModel, after
    ``deepspeed.initialize``) for micro-batches of ``plan.micro_batch_size`` x ``model.seq_length``;
    returns the installed replaying forwards.  Numerics are those of the
    eager layers (tests/runtime/test_cuda_graphs_gpu.py)."""
    import time

    from transformer_engine.pytorch import make_graphed_callables  # needs CUDA: imported only here

    if not torch.cuda.is_available():
        raise ConfigError("kernels.cuda_graphs=true needs a CUDA device")
    release_retained_grad_nodes(model)
    layers = list(model.decoder.layers)[: plan.cuda_graph_layers]
    config = layers[0].config
    device = torch.device("cuda", torch.cuda.current_device())
    seq, mb = plan.config.model.seq_length, plan.micro_batch_size
    dtype = config.params_dtype
    rope = model.rotary_pos_emb(seq).to(device)
    t0 = time.perf_counter()
    eagers = [layer.forward for layer in layers]
    targets = [_CaptureTarget(layer, eager) for layer, eager in zip(layers, eagers)]
    sample_args = [
        (torch.zeros(seq, mb, config.hidden_size, dtype=dtype, device=device, requires_grad=True), rope) for _ in layers
    ]
    was_training = model.training
    model.train()
    # As Megatron's capture does: start from a clean cache, and hand back what the warm-up passes
    # (run on a side stream, whose cached blocks no other stream reuses) leave behind.
    gc.collect()
    torch.cuda.empty_cache()
    # One model chunk, one micro-batch: all forwards, then all backwards.  The schedule form is what
    # lets TE reuse output, output-gradient and weight-gradient buffers across layers.
    graphed = make_graphed_callables(
        tuple(targets),
        sample_args,
        num_warmup_iters=warmup_iters,
        allow_unused_input=True,
        sample_kwargs=[{} for _ in layers],
        _order=[1, -1],
        _reuse_graph_input_output_buffers=True,
        **_fp8_arguments(config),
    )
    model.train(was_training)
    gc.collect()
    torch.cuda.empty_cache()
    installed = []
    # With a schedule (_order) TE returns, per layer, a function that replays the graphs.
    for layer, fn, eager in zip(layers, graphed, eagers):
        for param in layer.parameters():
            if param.requires_grad:
                param.register_hook(functools.partial(_own_first_gradient, param))
        layer.forward = _ReplayingForward(layer, fn, eager, sample_args[0][0].shape, rope.shape)
        installed.append(layer.forward)
    torch.cuda.synchronize()
    log.info(
        "captured CUDA graphs for %d of %d layers (micro-batch %d x %d tokens) in %.1f s; GPU memory now "
        "%.1f GiB allocated, %.1f GiB reserved, of which the graph pool %.2f GiB",
        len(layers),
        len(model.decoder.layers),
        mb,
        seq,
        time.perf_counter() - t0,
        torch.cuda.memory_allocated() / 2**30,
        torch.cuda.memory_reserved() / 2**30,
        graph_pool_bytes() / 2**30,
    )
    return installed


def graph_pool_bytes() -> int:
    """Bytes the caching allocator holds in private (CUDA-graph) pools on this device."""
    return sum(
        s["total_size"] for s in torch.cuda.memory_snapshot() if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0)
    )
