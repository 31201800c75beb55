"""What the TRL comparisons (``sft_vs_trl``, ``dpo_vs_trl``) share.

The model shape (Llama-3.2-3B's, for Litespark's ``--set`` and for Hugging Face's ``LlamaConfig``), the
word-level stand-in for Llama 3's tokenizer that TRL is given, running a Litespark entry point and
reading its ``metrics.jsonl``, TRL's trainer at each of several micro-batches in its own worker process,
the per-stack results kept in ``OUT.work/`` and reused, and the parts of the report both write.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from litespark.log import get_logger

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


def add_bench_args(p: argparse.ArgumentParser, *, stacks: str, seq_help: str, global_batch: int, batch_help: str):
    """The options both benches take, and the hidden ones of their TRL worker processes."""
    p.add_argument("--out", help="result stem: OUT.json, OUT.md, OUT.png")
    p.add_argument("--preset", default="llama-3b", help="Litespark's run settings (the model shape is Llama-3.2-3B's)")
    p.add_argument("--layers", type=int, default=None, help="cut the model to N layers (default: all 28)")
    p.add_argument("--seq", type=int, default=4096, help=seq_help)
    p.add_argument("--global-batch", type=int, default=global_batch, help=batch_help)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="steps not timed")
    p.add_argument("--stacks", default=stacks)
    p.add_argument(
        "--trl-micro-batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 4],
        help="TRL's per_device_train_batch_size values to measure; the fastest counts",
    )
    p.add_argument("--set", action="append", default=[], help="extra --set for the Litespark runs")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--trl-worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, help=argparse.SUPPRESS)
    p.add_argument("--liger", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)


def model_shape(args, seq_length: int) -> dict:
    """Llama-3.2-3B's ``model.*`` settings with ``--layers`` and the ``model.*`` of ``--set`` applied, at
    Litespark's row length ``seq_length``."""
    shape = dict(LLAMA_32_3B, **({"model.num_layers": args.layers} if args.layers else {}))
    shape.update(item.split("=", 1) for item in args.set if item.startswith("model."))
    shape["model.seq_length"] = seq_length
    return shape


def length_stats(lengths: np.ndarray) -> dict:
    """Median, mean, 90th percentile and maximum of some token counts."""
    return {
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
    }


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """``rows`` as JSON lines, under a temporary name then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def run_litespark(kind: str, entry: list[str], args, work: Path, seq_length: int) -> tuple[dict, list[dict]]:
    """``python -m ENTRY`` for ``--steps`` steps of ``--global-batch`` rows of ``seq_length`` tokens, in
    ``work/kind``; returns the timed steps' summary (``status`` ok, or why not) and every metrics record."""
    run_dir = work / kind
    if run_dir.exists():  # an earlier attempt that failed (a measured one is reused, never re-run)
        shutil.rmtree(run_dir)
    sets = [f"{k}={v}" for k, v in model_shape(args, seq_length).items()]
    sets += [
        f"data.global_batch_size={args.global_batch}",
        "checkpoint.enabled=false",
        f"run.log_interval={args.warmup}",
    ]
    cmd = [sys.executable, "-m", *entry, "--train-iters", str(args.steps), "--run-dir", str(run_dir)]
    cmd += [a for s in sets + list(args.set) for a in ("--set", s)]
    log.info("%s: %s", kind, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    (work / f"{kind}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"status": f"failed ({proc.returncode}): {last}"}, []
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = timed_steps(records, args.warmup)
    seconds = sum(r["seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    plan = (run_dir / "plan.yaml").read_text()
    import yaml

    summary = {
        "status": "ok",
        "tokens_per_s": tokens / seconds,
        "steps_timed": args.steps - args.warmup,
        "seconds": seconds,
        "tokens": tokens,
        "padding_tokens": sum(r.get("padding_tokens", 0) for r in timed),
        "trained_tokens": sum(r.get("trained_tokens", r["tokens"]) for r in timed),
        "mfu": sum(r.get("mfu", 0) * r["seconds"] for r in timed) / seconds,
        "peak_memory_gib": max(r.get("peak_memory_gib", 0) for r in timed),
        "micro_batch": yaml.safe_load(plan).get("micro_batch_size"),
        "final_loss": timed[-1]["loss"],
        "plan": plan,
    }
    return summary, records


def timed_steps(records: list[dict], warmup: int) -> list[dict]:
    """The train records of the steps after the first ``warmup``."""
    return [r for r in records if r.get("split") == "train" and not r.get("warmup") and r["step"] > warmup]


def trl_by_micro_batch(module: str, args, data: Path, work: Path, global_batch: int) -> tuple[dict[int, dict], list]:
    """``module``'s TRL worker at each of ``--trl-micro-batches`` with ``global_batch`` rows (or pairs) a
    step, each attempt in its own process (with Liger's kernels, then without); returns the result of
    each micro-batch that ran and the failed attempts."""
    by_micro: dict[int, dict] = {}
    attempts: list[dict] = []
    for micro in args.trl_micro_batches:
        for liger in (True, False):
            out = work / f"trl-mb{micro}-{'liger' if liger else 'plain'}.json"
            if out.is_file():  # measured by an earlier invocation with the same --out (cut short after it)
                log.info("trl: micro-batch %d measured earlier, %s", micro, out)
                by_micro[micro] = json.loads(out.read_text())
                break
            cmd = [sys.executable, "-m", module, "--trl-worker", str(out), "--data", str(data)]
            cmd += ["--micro", str(micro), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--seq", str(args.seq), "--global-batch", str(global_batch)]
            cmd += ["--shape", json.dumps(model_shape(args, args.seq))] + (["--liger"] if liger else [])
            log.info("trl: %s", " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            (work / f"{out.stem}.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode == 0 and out.is_file():
                by_micro[micro] = json.loads(out.read_text())
                break
            oom = "out of memory" in (proc.stdout + proc.stderr).lower()
            last = "out of memory" if oom else (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            attempts.append({"micro_batch": micro, "liger": liger, "error": last})
            if oom:
                break  # does not fit: another kernel choice would not either
    return by_micro, attempts


def hf_llama_config(shape: dict):
    """Hugging Face's ``LlamaConfig`` of a :func:`model_shape`, with PyTorch's SDPA attention (the
    flash-attention packages are not installed and the Hub kernels need a network)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=int(shape["model.vocab_size"]),
        hidden_size=int(shape["model.hidden_size"]),
        intermediate_size=int(shape["model.ffn_hidden_size"]),
        num_hidden_layers=int(shape["model.num_layers"]),
        num_attention_heads=int(shape["model.num_attention_heads"]),
        num_key_value_heads=int(shape["model.num_query_groups"]),
        max_position_embeddings=131072,
        rms_norm_eps=float(shape["model.norm_epsilon"]),
        tie_word_embeddings=shape["model.tie_embeddings"] == "true",
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": float(shape["model.rotary_base"]),
            "factor": float(shape["model.rope_scaling_factor"]),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        attn_implementation="sdpa",  # type: ignore[call-arg]  # PretrainedConfig's keyword
    )


def trl_model(args):
    """The TRL worker's model: ``--shape`` with seeded initial weights, on the GPU (the CPU without one)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_llama_config(json.loads(args.shape)))
    return model.to("cuda" if torch.cuda.is_available() else "cpu")  # type: ignore[arg-type]


def trl_training_args(args, cuda: bool) -> dict:
    """The settings both TRL workers give their trainer's config: ``--micro`` rows (or pairs) a device
    batch, ``--global-batch`` a step, ``--steps`` steps, sequences of up to ``--seq`` tokens, BF16 autocast on
    the GPU, no gradient checkpointing (TRL's default is on), fused AdamW, optionally Liger's kernels,
    non-padding tokens counted, nothing saved or reported."""
    return {
        "output_dir": str(Path(args.trl_worker).parent / "trl-out"),
        "per_device_train_batch_size": args.micro,
        "gradient_accumulation_steps": args.global_batch // args.micro,
        "max_steps": args.steps,
        "bf16": cuda,
        "max_length": args.seq,
        "gradient_checkpointing": False,
        "optim": "adamw_torch_fused" if cuda else "adamw_torch",
        "logging_steps": args.warmup,
        "save_strategy": "no",
        "report_to": [],
        "use_liger_kernel": args.liger,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 2 if cuda else 0,
        "seed": 0,
    }


def llama3_word_tokenizer(vocab: int):
    """A tokenizer with Llama 3's pad and end-of-turn ids and nothing else (the examples are token ids
    already: TRL only asks a tokenizer for those two); a vocabulary too small for them (a CPU test's)
    has its last two ids instead."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    pad, eos = (PAD_ID, EOS_ID) if vocab > EOS_ID else (vocab - 2, vocab - 1)
    words = Tokenizer(models.WordLevel({"<unk>": 0, PAD: pad, EOS: eos}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token=PAD, eos_token=EOS, unk_token="<unk>")


def step_timer(cuda: bool, counters: Callable[[Any], tuple[int, ...]]):
    """A ``TrainerCallback`` whose ``marks`` get ``(time, *counters(state))`` at the end of each optimizer
    step, the GPU's queue drained first."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), *counters(state)))

    return Timer()


def measure_stacks(stacks: list[str], work: Path, measure: Callable[[str], dict]) -> dict[str, dict]:
    """``measure(stack)`` for each stack, except those an earlier invocation with the same ``--out``
    measured already (kept in ``work/STACK.result.json``, one run per stack)."""
    from litespark.files import atomic_write_text

    results = {}
    for stack in stacks:
        done = work / f"{stack}.result.json"
        if done.is_file():
            results[stack] = json.loads(done.read_text())
            log.info("%s: measured earlier, %s", stack, done)
            continue
        results[stack] = measure(stack)
        results[stack]["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        if results[stack].get("status") == "ok":
            atomic_write_text(done, json.dumps(results[stack], indent=1))
        log.info("%s: %s", stack, {k: v for k, v in results[stack].items() if k != "plan"})
    return results


def bench_main(p: argparse.ArgumentParser, argv: list[str] | None, worker, measure, render, draw) -> int:
    """Parse ``p``'s options, then either be a TRL worker (``worker(args)``) or the bench: ``measure(args,
    work)`` writes the data into ``OUT.work`` and measures the stacks, returning its part of the setup and
    the results; the report (GPU, date, command, setup, results) goes to ``OUT.json``, ``OUT.md`` (by
    ``render``) and ``OUT.png`` (by ``draw``), and the markdown to stdout."""
    import torch

    from litespark.bench.results import write_report
    from litespark.log import setup_logging

    args = p.parse_args(argv)
    setup_logging()
    if args.trl_worker:
        return worker(args)
    if not args.out:
        p.error("--out is required")
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    out = Path(args.out)
    work = out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    setup, results = measure(args, work)
    common = {"layers": args.layers or 28, "seq": args.seq, "global_batch": args.global_batch}
    common |= {"steps": args.steps, "warmup": args.warmup, "preset": args.preset}
    report = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.date.today().isoformat(),
        "command": f"{p.prog} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": common | setup,
        "results": results,
        "env": {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
    }
    write_report(report, out, render=render, draw=draw)
    print(render(report))
    return 0


def markdown_footer(report: dict, trl_lines: list[str]) -> list[str]:
    """When each stack was measured, TRL's options, ``trl_lines``, the command."""
    r, lines = report["results"], []
    when = [f"{n} {x['measured_at']}" for n, x in r.items() if x.get("measured_at")]
    if when:
        lines += ["", f"Measured: {'; '.join(when)}."]
    if r.get("trl", {}).get("options"):
        lines += ["", f"TRL options: {r['trl']['options']}."]
    return [*lines, *trl_lines, "", f"Command: `{report['command']}`", ""]


def plot_bars(
    path: Path, labels: list[str], series: dict[str, list[float]], colors: list[str], xlabel: str, title: str
):
    """Horizontal bars, one row per label: one series coloured per row, or several side by side
    coloured per series (with a legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6 if len(series) == 1 else 3.2))
    rows = np.arange(len(labels))
    height = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * height
        color = colors[: len(labels)] if len(series) == 1 else colors[i]
        ax.barh(rows + offset, values, height=height, color=color, label=name)
    ax.set_yticks(rows, labels)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
