"""A CPU stand-in for Transformer Engine's linears, for the tests of ``litespark.runtime.fp32_grads``.

TE needs a GPU; these follow the part of its contract that the fp32-gradient link relies on: with
``fuse_wgrad_accumulation`` the fp32 weight gradient is accumulated into ``weight.main_grad`` (written
over it where the weight has ``overwrite_main_grad`` set) and the weight gets no ``.grad``.
"""

from __future__ import annotations

import torch

from tests.helpers.batches import micro_batches


class WgradIntoMainGrad(torch.autograd.Function):
    """y = x W^T; with fusion, dW is accumulated in fp32 into W.main_grad (written over it where the
    weight has ``overwrite_main_grad`` set, as TE does) and W gets no .grad."""

    @staticmethod
    def forward(ctx, x, weight, fuse):
        ctx.save_for_backward(x, weight)
        ctx.fuse = fuse
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        wgrad = grad_out.reshape(-1, grad_out.shape[-1]).float().t() @ x.reshape(-1, x.shape[-1]).float()
        if ctx.fuse:
            if getattr(weight, "overwrite_main_grad", False):
                weight.main_grad.copy_(wgrad)
            else:
                weight.main_grad.add_(wgrad)
            return grad_out @ weight, None, None
        return grad_out @ weight, wgrad.to(weight.dtype), None


class TELikeLinear(torch.nn.Module):
    """The parts of a TE linear that litespark.runtime.fp32_grads relies on."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.2)
        self.weight_names = ["weight"]
        self.fuse_wgrad_accumulation = False

    def forward(self, x):
        return WgradIntoMainGrad.apply(x, self.weight, self.fuse_wgrad_accumulation)


class ToyLM(torch.nn.Module):
    """Embedding, two TE-like linears and a norm weight: enough to have fused and unfused gradients."""

    def __init__(self, vocab: int = 64, hidden: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.up = TELikeLinear(hidden, 2 * hidden)
        self.norm_weight = torch.nn.Parameter(torch.ones(2 * hidden))
        self.down = TELikeLinear(2 * hidden, vocab)

    def forward(self, input_ids, position_ids, attention_mask, labels):
        h = torch.nn.functional.silu(self.up(self.embed(input_ids))) * self.norm_weight
        logits = self.down(h).float()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")


def train_toy(
    fp32_accumulation: bool,
    link: bool,
    steps: int = 5,
    before_steps=None,
    model_class=ToyLM,
    world_size: int = 1,
    deepspeed_step_patches: bool = True,
):
    """``steps`` optimizer steps of ``model_class`` through ``build_engine`` and the trainer's
    ``train_step`` (bf16, clipping active, two micro-batches of 2 per rank), this rank's share of one
    fixed global batch.  ``link=False`` hides the TE-like linears from the fp32-gradient link, so
    DeepSpeed adds their bf16 ``.grad``.  Returns ``(engine, optimizer, fp32 weights, grad norms)``."""
    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.runtime.distributed import init_distributed
    from litespark.runtime.engine import build_engine
    from litespark.training.step import train_step

    plan = resolve(
        apply_overrides(
            get_preset("tiny"),
            [
                "precision.bf16=true",
                f"data.global_batch_size={4 * world_size}",
                "data.micro_batch_size=2",
                "optim.clip_grad=0.05",
                "optim.warmup_iters=1",
                "optim.lr=1e-2",
                f"precision.fp32_grad_accumulation={str(fp32_accumulation).lower()}",
                f"optim.deepspeed_step_patches={str(deepspeed_step_patches).lower()}",
            ],
        ),
        world_size,
    )
    init_distributed(1, 1234)
    rank = torch.distributed.get_rank()
    model = model_class().to(torch.bfloat16)
    if not link:
        for m in (model.up, model.down):
            m.weight_names = []  # not fusable (as a TE linear with split weights): plain .grad path
    engine, optimizer, _ = build_engine(plan, model)
    if before_steps is not None:
        before_steps(engine, optimizer)
    data = torch.randint(0, 64, (4 * world_size, 17), generator=torch.Generator().manual_seed(3))[
        4 * rank : 4 * rank + 4
    ]
    batches = micro_batches(data)
    norms = []
    for _ in range(steps):
        train_step(engine, batches)
        norms.append(float(engine.get_global_grad_norm()))
    weights = {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}
    return engine, optimizer, weights, norms
