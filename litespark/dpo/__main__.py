"""``python -m litespark.dpo``: direct preference optimisation on the Litespark engine.

    python -m litespark.dpo --hf Llama-3.2-3B-sft --data prefs.jsonl --train-iters 500 \\
        --run-dir runs/dpo --export-hf out/llama-3.2-3b-dpo --set dpo.beta=0.1
    torchrun --nproc-per-node 8 -m litespark.dpo --hf HF_DIR --data HF_DATASET_DIR --set sft.split=train

The command line is ``python -m litespark.sft``'s (``--hf`` model, weights and tokenizer, ``--data``,
``--export-hf``, ``--preflight``, ``--print-config``; settings in the same order) on preference pairs
in TRL's formats (:mod:`litespark.dpo.examples`).  Before the first step the reference model's
log-probabilities are computed once with the starting weights and stored
(:mod:`litespark.dpo.reference`); training then holds one model.  The loss is ``dpo.loss_type``
(DPO's sigmoid by default, with ``dpo.beta``); TRL's metrics (``rewards/*``, ``logps/*``) go to
``metrics.jsonl`` and the report (docs/post_training.md).

The fine-tuning defaults (:data:`DPO_DEFAULTS`) are TRL's ``DPOConfig``'s.
"""

from __future__ import annotations

import sys

from litespark.config.cli import user_errors_exit_2
from litespark.sft.__main__ import run_finetuning

DPO_DEFAULTS = [
    "optim.lr=1e-6",
    "optim.min_lr=0",
    "optim.warmup_iters=0",
    "optim.weight_decay=0",
    "optim.beta2=0.999",
    "run.run_dir=runs/dpo",
    "precision.fp8_recipe=blockwise",
]
"""TRL ``DPOConfig``'s optimiser settings (learning rate 1e-6 decayed to 0, no warm-up, no weight
decay, Adam's beta2 0.999), applied over the preset's pretraining ones; and FP8 (where the preset
has it) with block scales, whose rounding of a token does not depend on the rest of its micro-batch,
so that the policy reproduces the reference pass (the other recipes are refused for DPO)."""


@user_errors_exit_2("litespark.dpo")
def main(argv: list[str] | None = None) -> int:
    return run_finetuning(argv, "dpo", DPO_DEFAULTS, __doc__)


if __name__ == "__main__":
    sys.exit(main())
