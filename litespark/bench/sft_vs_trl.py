"""``python -m litespark.bench.sft_vs_trl``: Litespark SFT vs TRL's ``SFTTrainer`` vs Litespark pretraining.

One invocation, one GPU, the same model shape and the same examples for both fine-tuners:

- **data**: ``--examples`` synthetic chat examples, already tokenised (``input_ids`` and a
  ``completion_mask``, the columns TRL's own tokenisation writes, so neither side tokenises inside
  the measurement): lengths log-normal with median ``--median`` tokens and sigma ``--sigma``, cut to
  32..``--seq``; the first 20-60% of each example is the prompt (not trained).
- **litespark-sft**: ``python -m litespark.sft`` on that file (packing with document masks, the
  preset's FP8 and micro-batch); **litespark-pretrain**: ``python -m litespark.train --data mock`` at
  the same shape (the packing-overhead reference); **trl**: ``SFTTrainer`` with what TRL recommends
  for speed that this host has (see :func:`trl_worker`), the model in fp32 with BF16 autocast (fp32
  master weights, as Litespark's).
- Each runs in its own process for ``--steps`` optimizer steps of ``--global-batch`` rows of ``--seq``
  tokens; tokens/s counts real (non-padding) tokens over the steps after ``--warmup``.

Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``; each stack's measurement is kept in ``OUT.work/``, and
a later invocation with the same ``--out`` reuses it instead of measuring again (so ``--stacks`` can
be run one at a time where one call cannot hold them all; the report says when each was measured).  Example (GPU host, about 8 minutes)::

    python -m litespark.bench.sft_vs_trl --out benchmarks/results/sft_h200/sft_vs_trl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from litespark.bench.trl_common import (
    add_bench_args,
    bench_main,
    length_stats,
    llama3_word_tokenizer,
    markdown_footer,
    measure_stacks,
    model_shape,
    plot_bars,
    run_litespark,
    step_timer,
    trl_by_micro_batch,
    trl_model,
    trl_training_args,
    write_jsonl,
)
from litespark.log import get_logger

log = get_logger(__name__)


def write_examples(path: Path, n: int, median: float, sigma: float, seq: int, vocab: int, seed: int) -> dict:
    """``n`` tokenised examples as JSONL; returns the length statistics."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), 32, seq).astype(int)

    def examples():
        for n_tokens in lengths:
            prompt = int(n_tokens * rng.uniform(0.2, 0.6))
            ids = rng.integers(0, vocab, n_tokens).tolist()  # below Llama 3's special tokens (PAD_ID, EOS_ID)
            yield {"input_ids": ids, "completion_mask": [0] * prompt + [1] * (n_tokens - prompt)}

    write_jsonl(path, examples())
    return {
        "examples": n,
        "tokens": int(lengths.sum()),
        **length_stats(lengths),
        "distribution": f"log-normal, median {median:g}, sigma {sigma:g}, cut to 32..{seq}; prompt 20-60% of each",
    }


def _litespark(kind: str, args, data: Path, work: Path) -> dict:
    if kind == "litespark-sft":
        entry = ["litespark.sft", "--preset", args.preset, "--data", str(data)]
    else:
        entry = ["litespark.train", "--preset", args.preset, "--data", "mock"]
    return run_litespark(kind, entry, args, work, args.seq)[0]


def _trl(args, data: Path, work: Path) -> dict:
    """TRL at each of ``--trl-micro-batches``, a worker process per attempt (with Liger's kernels, then
    without); the fastest is TRL's result.  The largest micro-batch that fits is not the fastest here:
    padding-free packing makes a micro-batch one sequence whose attention mask covers all of it, so
    SDPA's work per token grows with the micro-batch."""
    by_micro, attempts = trl_by_micro_batch("litespark.bench.sft_vs_trl", args, data, work, args.global_batch)
    if not by_micro:
        return {"status": "failed", "attempts": attempts}
    best = max(by_micro.values(), key=lambda x: x["tokens_per_s"])
    by_tokens_per_s = {str(m): x["tokens_per_s"] for m, x in by_micro.items()}
    return dict(best, attempts=attempts, tokens_per_s_by_micro_batch=by_tokens_per_s)


def trl_worker(args) -> int:
    """One TRL ``SFTTrainer`` run: ``packing=True`` (best-fit decreasing, which turns padding-free on:
    the rows of a micro-batch are one sequence with position ids restarting per example, from which
    transformers masks attention per example), ``bf16=True`` on an fp32 model, PyTorch's SDPA (the
    flash-attention packages are not installed and the Hub kernels need a network), TRL's chunked LM
    head (its default), no gradient checkpointing, fused AdamW, optionally Liger's kernels."""
    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    model = trl_model(args)
    dataset = load_dataset("json", data_files=str(args.data), split="train")
    timer = step_timer(cuda, lambda state: (int(state.num_input_tokens_seen),))
    cfg = SFTConfig(**trl_training_args(args, cuda), learning_rate=2e-5, packing=True)
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=llama3_word_tokenizer(model.config.vocab_size),
        callbacks=[timer],
    )
    trainer.train()
    (t0, n0), (t1, n1) = timer.marks[args.warmup - 1], timer.marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "status": "ok",
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "seconds": t1 - t0,
        "tokens": n1 - n0,
        "steps_timed": len(timer.marks) - args.warmup,
        "micro_batch": args.micro,
        "liger": args.liger,
        "packed_rows": len(trainer.train_dataset),  # type: ignore[arg-type]
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "final_loss": losses[-1] if losses else None,
        "options": f"packing=True (bfd, padding-free), bf16={cfg.bf16} on fp32 weights, attention sdpa, TRL's chunked "
        f"LM head (its default), gradient_checkpointing=False, optim={getattr(cfg.optim, 'value', cfg.optim)}, "
        f"per_device_train_batch_size={args.micro}, gradient_accumulation_steps={cfg.gradient_accumulation_steps}, "
        f"use_liger_kernel={args.liger}, dataloader_num_workers={cfg.dataloader_num_workers}",
    }
    Path(args.trl_worker).write_text(json.dumps(result, indent=1))
    return 0


def to_markdown(report: dict) -> str:
    s, r = report["setup"], report["results"]
    lines = [
        f"# SFT: Litespark vs TRL SFTTrainer ({report['gpu']}, {report['date']})",
        "",
        f"Model: Llama-3.2-3B shape ({s['layers']} layers), vocab 128,256, tied embeddings, RoPE factor 32, "
        f"sequence {s['seq']}, global batch {s['global_batch']} rows, {s['steps']} steps ({s['warmup']} warm-up).",
        f"Data: {s['data']['examples']} examples, {s['data']['distribution']}; median {s['data']['median']:.0f}, "
        f"mean {s['data']['mean']:.0f}, p90 {s['data']['p90']:.0f}, max {s['data']['max']} tokens.",
        "",
        "| run | tokens/s (real tokens) | vs TRL | MFU | peak memory GiB | padding computed |",
        "|---|---|---|---|---|---|",
    ]
    trl = r.get("trl", {}).get("tokens_per_s")
    for name in ("litespark-sft", "litespark-pretrain", "trl"):
        x = r.get(name, {})
        if x.get("status") != "ok":
            lines.append(f"| {name} | {x.get('status', 'not run')} | | | | |")
            continue
        ratio = f"{x['tokens_per_s'] / trl:.2f}x" if trl else "-"
        mfu = f"{100 * x['mfu']:.1f}%" if x.get("mfu") else "-"
        pad = f"{x['padding_tokens'] / (x['tokens'] + x['padding_tokens']):.2%}" if "padding_tokens" in x else "-"
        lines.append(
            f"| {name} | {x['tokens_per_s']:,.0f} | {ratio} | {mfu} | {x.get('peak_memory_gib') or 0:.1f} | {pad} |"
        )
    sft, pre = r.get("litespark-sft", {}), r.get("litespark-pretrain", {})
    if sft.get("status") == "ok" and pre.get("status") == "ok":
        lines += ["", f"Packing overhead: Litespark SFT runs at {sft['tokens_per_s'] / pre['tokens_per_s']:.1%} of "
                  "Litespark pretraining's tokens/s at the same shape."]  # fmt: skip
    by_micro = r.get("trl", {}).get("tokens_per_s_by_micro_batch")
    trl_lines = []
    if by_micro:
        each = ", ".join(f"{m}: {v:,.0f}" for m, v in sorted(by_micro.items(), key=lambda kv: int(kv[0])))
        trl_lines = ["", f"TRL tokens/s by per_device_train_batch_size (the fastest is the table's): {each}."]
    lines += markdown_footer(report, trl_lines)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    r = report["results"]
    names = [n for n in ("trl", "litespark-sft", "litespark-pretrain") if r.get(n, {}).get("status") == "ok"]
    plot_bars(
        path,
        names,
        {"tokens/s": [r[n]["tokens_per_s"] for n in names]},
        ["tab:gray", "tab:orange", "tab:blue"],
        "tokens/s, real tokens (one GPU)",
        f"Llama-3.2-3B shape, seq {report['setup']['seq']}, {report['gpu']}",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litespark.bench.sft_vs_trl", description=__doc__.splitlines()[0])
    add_bench_args(
        p,
        stacks="litespark-sft,litespark-pretrain,trl",
        seq_help="tokens per row",
        global_batch=8,
        batch_help="rows of --seq tokens per optimizer step",
    )
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--median", type=float, default=600.0)
    p.add_argument("--sigma", type=float, default=0.9)
    return bench_main(p, argv, trl_worker, _measure, to_markdown, plot)


def _measure(args, work: Path) -> tuple[dict, dict]:
    data = work / "examples.jsonl"
    vocab = min(int(model_shape(args, args.seq)["model.vocab_size"]), 128000)
    stats = write_examples(
        data, args.examples, args.median, args.sigma, args.seq, vocab, seed=0
    )  # seeded: the same file
    log.info("data: %s", stats)
    results = measure_stacks(
        args.stacks.split(","),
        work,
        lambda stack: _trl(args, data, work) if stack == "trl" else _litespark(stack, args, data, work),
    )
    return {"data": stats}, results


if __name__ == "__main__":
    sys.exit(main())
