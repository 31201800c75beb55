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
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from litespark.log import get_logger, setup_logging

log = get_logger(__name__)

LLAMA_32_3B = {
    "model.num_layers": 28,
    "model.hidden_size": 3072,
    "model.num_attention_heads": 24,
    "model.num_query_groups": 8,
    "model.ffn_hidden_size": 8192,
    "model.vocab_size": 128256,
    "model.tie_embeddings": "true",
    "model.rope_scaling_factor": 32,
    "model.rotary_base": 500000.0,
    "model.norm_epsilon": 1e-5,
}
"""Llama-3.2-3B's shape (``meta-llama/Llama-3.2-3B``'s config.json)."""
PAD, PAD_ID, EOS, EOS_ID = "<|finetune_right_pad_id|>", 128004, "<|eot_id|>", 128009
"""Llama 3's padding and end-of-turn tokens; the examples' ids stay below 128,000, where those start."""


def write_examples(path: Path, n: int, median: float, sigma: float, seq: int, vocab: int, seed: int) -> dict:
    """``n`` tokenised examples as JSONL; returns the length statistics."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), 32, seq).astype(int)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for n_tokens in lengths:
            prompt = int(n_tokens * rng.uniform(0.2, 0.6))
            ids = rng.integers(0, vocab, n_tokens).tolist()  # below Llama 3's special tokens (PAD_ID, EOS_ID)
            f.write(json.dumps({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (n_tokens - prompt)}) + "\n")
    tmp.replace(path)
    return {
        "examples": n,
        "tokens": int(lengths.sum()),
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
        "distribution": f"log-normal, median {median:g}, sigma {sigma:g}, cut to 32..{seq}; prompt 20-60% of each",
    }


def model_shape(args) -> dict:
    """Llama-3.2-3B's ``model.*`` settings with ``--layers`` and the ``model.*`` of ``--set`` applied."""
    shape = dict(LLAMA_32_3B, **({"model.num_layers": args.layers} if args.layers else {}))
    shape.update(item.split("=", 1) for item in args.set if item.startswith("model."))
    shape["model.seq_length"] = args.seq
    return shape


def _sets(args) -> list[str]:
    sets = [f"{k}={v}" for k, v in model_shape(args).items()]
    sets += [
        f"data.global_batch_size={args.global_batch}",
        "checkpoint.enabled=false",
        f"run.log_interval={args.warmup}",
    ]
    return [a for s in sets + list(args.set) for a in ("--set", s)]


def _litespark(kind: str, args, data: Path, work: Path) -> dict:
    run_dir = work / kind
    if kind == "litespark-sft":
        cmd = [sys.executable, "-m", "litespark.sft", "--preset", args.preset, "--data", str(data)]
    else:
        cmd = [sys.executable, "-m", "litespark.train", "--preset", args.preset, "--data", "mock"]
    cmd += ["--train-iters", str(args.steps), "--run-dir", str(run_dir), *_sets(args)]
    log.info("%s: %s", kind, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    (work / f"{kind}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"status": f"failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1][:300]}"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r.get("split") == "train" and not r.get("warmup") and r["step"] > args.warmup]
    seconds = sum(r["seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    plan = (run_dir / "plan.yaml").read_text()
    return {
        "status": "ok",
        "tokens_per_s": tokens / seconds,
        "steps_timed": args.steps - args.warmup,
        "seconds": seconds,
        "tokens": tokens,
        "padding_tokens": sum(r.get("padding_tokens", 0) for r in timed),
        "trained_tokens": sum(r.get("trained_tokens", r["tokens"]) for r in timed),
        "mfu": sum(r.get("mfu", 0) * r["seconds"] for r in timed) / seconds,
        "peak_memory_gib": max(r.get("peak_memory_gib", 0) for r in timed),
        "micro_batch": _micro_batch(plan),
        "final_loss": timed[-1]["loss"],
        "plan": plan,
    }


def _micro_batch(plan_yaml: str) -> int | None:
    import yaml

    return yaml.safe_load(plan_yaml).get("micro_batch_size")


def _trl(args, data: Path, work: Path) -> dict:
    """TRL at each of ``--trl-micro-batches``, a worker process per attempt (with Liger's kernels, then
    without); the fastest is TRL's result.  The largest micro-batch that fits is not the fastest here:
    padding-free packing makes a micro-batch one sequence whose attention mask covers all of it, so
    SDPA's work per token grows with the micro-batch."""
    attempts: list[dict] = []
    by_micro: dict[str, float] = {}
    best: dict | None = None
    for micro in args.trl_micro_batches:
        result = _trl_at(args, data, work, micro, attempts)
        if result is not None:
            by_micro[str(micro)] = result["tokens_per_s"]
            if best is None or result["tokens_per_s"] > best["tokens_per_s"]:
                best = result
    if best is None:
        return {"status": "failed", "attempts": attempts}
    return dict(best, attempts=attempts, tokens_per_s_by_micro_batch=by_micro)


def _trl_at(args, data: Path, work: Path, micro: int, attempts: list[dict]) -> dict | None:
    """TRL at one micro-batch: with Liger's kernels, then without; None when neither runs (each
    failure is added to ``attempts``)."""
    for liger in (True, False):
        out = work / f"trl-mb{micro}-{'liger' if liger else 'plain'}.json"
        cmd = [sys.executable, "-m", "litespark.bench.sft_vs_trl", "--trl-worker", str(out), "--data", str(data)]
        cmd += ["--micro", str(micro), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--seq", str(args.seq), "--global-batch", str(args.global_batch)]
        cmd += ["--shape", json.dumps(model_shape(args))] + (["--liger"] if liger else [])
        log.info("trl: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        (work / f"{out.stem}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode == 0 and out.is_file():
            return json.loads(out.read_text())
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        attempts.append({"micro_batch": micro, "liger": liger, "error": last})
        if "out of memory" in (proc.stdout + proc.stderr).lower():
            break  # does not fit: another kernel choice would not either
    return None


def trl_worker(args) -> int:
    """One TRL ``SFTTrainer`` run: ``packing=True`` (best-fit decreasing, which turns padding-free on:
    the rows of a micro-batch are one sequence with position ids restarting per example, from which
    transformers masks attention per example), ``bf16=True`` on an fp32 model, PyTorch's SDPA (the
    flash-attention packages are not installed and the Hub kernels need a network), TRL's chunked LM
    head (its default), no gradient checkpointing, fused AdamW, optionally Liger's kernels."""
    import torch
    from datasets import load_dataset
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    m = json.loads(args.shape)
    config = LlamaConfig(
        vocab_size=int(m["model.vocab_size"]),
        hidden_size=int(m["model.hidden_size"]),
        intermediate_size=int(m["model.ffn_hidden_size"]),
        num_hidden_layers=int(m["model.num_layers"]),
        num_attention_heads=int(m["model.num_attention_heads"]),
        num_key_value_heads=int(m["model.num_query_groups"]),
        max_position_embeddings=131072,
        rms_norm_eps=float(m["model.norm_epsilon"]),
        tie_word_embeddings=m["model.tie_embeddings"] == "true",
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": float(m["model.rotary_base"]),
            "factor": float(m["model.rope_scaling_factor"]),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        attn_implementation="sdpa",  # type: ignore[call-arg]  # PretrainedConfig's keyword
    )
    # The examples are token ids already; TRL still wants a tokenizer for its pad and end ids (Llama 3's).
    words = Tokenizer(models.WordLevel({"<unk>": 0, PAD: PAD_ID, EOS: EOS_ID}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token=PAD, eos_token=EOS, unk_token="<unk>")
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model = LlamaForCausalLM(config).to("cuda" if cuda else "cpu")  # type: ignore[arg-type]
    dataset = load_dataset("json", data_files=str(args.data), split="train")

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    timer = Timer()
    cfg = SFTConfig(
        output_dir=str(Path(args.trl_worker).parent / "trl-out"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.global_batch // args.micro,
        max_steps=args.steps,
        learning_rate=2e-5,
        bf16=cuda,
        packing=True,
        max_length=args.seq,
        gradient_checkpointing=False,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_steps=args.warmup,
        save_strategy="no",
        report_to=[],
        use_liger_kernel=args.liger,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=2 if cuda else 0,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
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
    when = [f"{n} {x['measured_at']}" for n, x in r.items() if x.get("measured_at")]
    if when:
        lines += ["", f"Measured: {'; '.join(when)}."]
    if r.get("trl", {}).get("options"):
        lines += ["", f"TRL options: {r['trl']['options']}."]
    by_micro = r.get("trl", {}).get("tokens_per_s_by_micro_batch")
    if by_micro:
        each = ", ".join(f"{m}: {v:,.0f}" for m, v in sorted(by_micro.items(), key=lambda kv: int(kv[0])))
        lines += ["", f"TRL tokens/s by per_device_train_batch_size (the fastest is the table's): {each}."]
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n for n in ("trl", "litespark-sft", "litespark-pretrain") if report["results"].get(n, {}).get("status") == "ok"
    ]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.barh(
        names,
        [report["results"][n]["tokens_per_s"] for n in names],
        color=["tab:gray", "tab:orange", "tab:blue"][: len(names)],
    )
    ax.set_xlabel("tokens/s, real tokens (one GPU)")
    ax.invert_yaxis()
    fig.suptitle(f"Llama-3.2-3B shape, seq {report['setup']['seq']}, {report['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litespark.bench.sft_vs_trl", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="result stem: OUT.json, OUT.md, OUT.png")
    p.add_argument("--preset", default="llama-3b", help="Litespark's run settings (the model shape is Llama-3.2-3B's)")
    p.add_argument("--layers", type=int, default=None, help="cut the model to N layers (default: all 28)")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=8, help="rows of --seq tokens per optimizer step")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="steps not timed")
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--median", type=float, default=600.0)
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--stacks", default="litespark-sft,litespark-pretrain,trl")
    p.add_argument(
        "--trl-micro-batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 4],
        help="TRL's per_device_train_batch_size values to measure; the fastest counts",
    )
    p.add_argument("--set", action="append", default=[], help="extra --set for both Litespark runs")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--trl-worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, help=argparse.SUPPRESS)
    p.add_argument("--liger", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging()
    if args.trl_worker:
        return trl_worker(args)
    if not args.out:
        p.error("--out is required")
    import datetime

    import torch

    out = Path(args.out)
    work = out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "examples.jsonl"
    vocab = min(int(model_shape(args)["model.vocab_size"]), 128000)
    stats = write_examples(
        data, args.examples, args.median, args.sigma, args.seq, vocab, seed=0
    )  # seeded: the same file
    log.info("data: %s", stats)
    results = {}
    for stack in args.stacks.split(","):
        done = work / f"{stack}.result.json"
        if done.is_file():  # measured by an earlier invocation with the same --out (one run per stack)
            results[stack] = json.loads(done.read_text())
            log.info("%s: measured earlier, %s", stack, done)
            continue
        results[stack] = _trl(args, data, work) if stack == "trl" else _litespark(stack, args, data, work)
        results[stack]["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        if results[stack].get("status") == "ok":
            done.write_text(json.dumps(results[stack], indent=1))
        log.info("%s: %s", stack, {k: v for k, v in results[stack].items() if k != "plan"})
    report = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.date.today().isoformat(),
        "command": "python -m litespark.bench.sft_vs_trl " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {
            "layers": args.layers or 28,
            "seq": args.seq,
            "global_batch": args.global_batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "data": stats,
            "preset": args.preset,
        },
        "results": results,
        "env": {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
    }
    from litespark.bench.results import write_report

    write_report(report, out, render=to_markdown, draw=plot)
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
