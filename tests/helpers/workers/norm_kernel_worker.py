"""One small TE model's forward and backward with the RMSNorm kernels of ``--norm-kernel``.

TE reads its cuDNN-normalization switches once per process, so comparing ``kernels.norm_kernel``
values takes one process each (``tests/model/test_te_backend_gpu.py``).  Writes, for BF16 and FP8, the logits, the
loss and the QKV / FC1 weight gradients (same weights in both processes), and the names of the
normalization kernels the profiler saw.

    python tests/helpers/workers/norm_kernel_worker.py --norm-kernel cudnn --out OUT.pt
"""

from __future__ import annotations

import argparse
import os

import torch

from litespark.config import apply_overrides, resolve
from litespark.config.cli import quiet_optional_dependency_warnings
from litespark.config.presets import get_preset
from litespark.model.build import TE_CUDNN_NORM_SWITCHES, build_model, position_ids_for
from litespark.runtime.distributed import destroy_distributed, init_distributed
from tests.helpers.gpu_models import SHAPE as GPU_TEST_SHAPE

SHAPE = [*GPU_TEST_SHAPE, "kernels.backend=te"]


def _forward_backward(model, plan):
    g = torch.Generator().manual_seed(0)
    m = plan.config.model
    tokens = torch.randint(0, m.vocab_size, (plan.micro_batch_size, m.seq_length + 1), generator=g).cuda()
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    loss = (
        model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None, labels=labels)
        .float()
        .mean()
    )
    loss.backward()
    with torch.no_grad():
        logits = model(input_ids=inputs, position_ids=position_ids_for(inputs), attention_mask=None).float()
    layer = model.decoder.layers[0]
    return {
        "logits": logits.cpu(),
        "loss": loss.detach().cpu(),
        "qkv_grad": layer.self_attention.linear_qkv.weight.grad.float().cpu(),
        "fc1_grad": layer.mlp.linear_fc1.weight.grad.float().cpu(),
    }


def main() -> int:
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--norm-kernel", required=True, choices=("te", "cudnn"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = {}
    state = None
    init_distributed(1, 1234)
    try:
        precisions = ("bf16", "fp8") if torch.cuda.get_device_capability() >= (9, 0) else ("bf16",)
        for precision in precisions:
            plan = resolve(
                apply_overrides(
                    get_preset("tiny"),
                    [
                        *SHAPE,
                        f"kernels.norm_kernel={args.norm_kernel}",
                        f"precision.fp8={str(precision == 'fp8').lower()}",
                    ],
                )
            )
            model = build_model(plan).cuda()
            if state is None:
                with torch.no_grad():  # norm weights away from 1, so the scale takes part
                    for name, param in model.named_parameters():
                        if "norm" in name:
                            param.add_(
                                0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(7)).to(param)
                            )
                state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
            else:
                model.load_state_dict(state, strict=False)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                result = _forward_backward(model, plan)
                torch.cuda.synchronize()
            result["norm_kernels"] = sorted({e.name for e in prof.events() if "norm" in e.name.lower()})
            out[precision] = result
        out["switches"] = {name: os.environ.get(name) for name in TE_CUDNN_NORM_SWITCHES}
        torch.save(out, args.out)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
