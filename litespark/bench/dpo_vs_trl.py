"""``python -m litespark.bench.dpo_vs_trl``: Litespark DPO vs TRL's ``DPOTrainer``, on one GPU.

One invocation, the same model shape and the same preference pairs for both:

- **data**: ``--pairs`` synthetic pairs, already tokenised as TRL's own preparation writes them
  (``prompt_ids``, ``chosen_ids``, ``rejected_ids``; token ids below 128,000, under Llama 3's special
  tokens), so neither side tokenises inside the measurement.  Prompt and response lengths are
  log-normal: median ``--prompt-median`` and ``--response-median`` tokens, sigma ``--sigma``; a prompt is
  cut to 8..``--seq``/2 tokens, each response to 8..(``--seq`` - its prompt), so every sequence (prompt +
  response) holds at most ``--seq`` tokens.
- **litespark-dpo**: ``python -m litespark.dpo`` on that file at ``model.seq_length`` 2 x ``--seq`` (a
  row holds whole pairs, both of a pair's sequences), ``--global-batch`` rows a step, the preset's FP8
  and micro-batch; it computes the reference log-probabilities in one pass before step 0.
- **trl**: ``DPOTrainer`` with ``precompute_ref_log_probs=True`` (done in its constructor), the sigmoid
  loss, beta 0.1, ``max_length`` ``--seq``, and what TRL offers for speed that this host has (see
  :func:`trl_worker`), the model in fp32 with BF16 autocast (fp32 master weights, as Litespark's), at
  each of ``--trl-micro-batches`` pairs per device batch, each in its own process.  Its pairs per step
  (``--trl-global-batch``) default to Litespark's tokens per step: ``--global-batch`` x 2 x ``--seq`` over
  the mean pair's tokens, rounded to a multiple of the micro-batches.  TRL's figures are its best:
  training at its fastest micro-batch, the reference pass at its fastest batch (TRL's
  ``precompute_ref_batch_size`` can differ from the training micro-batch).
- Each stack trains ``--steps`` optimizer steps; training tokens/s count the steps after ``--warmup``,
  as trained tokens (the responses, whose log-probabilities DPO trains) and as real tokens (both
  sequences of each pair, without padding).  The reference pass is timed apart, and the total is the
  rate of training each pair once with its reference pass: 1 / (1 / reference + 1 / training), in real
  tokens/s (and in trained tokens/s at the timed steps' share of trained tokens).

Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``; each stack's measurement is kept in ``OUT.work/``, and
a later invocation with the same ``--out`` reuses it instead of measuring again (so ``--stacks`` can
be run one at a time where one call cannot hold them all; the report says when each was measured).
Example (GPU host, about 15 minutes)::

    python -m litespark.bench.dpo_vs_trl --out benchmarks/results/dpo_h200/dpo_vs_trl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
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
    timed_steps,
    trl_by_micro_batch,
    trl_model,
    trl_training_args,
    write_jsonl,
)
from litespark.log import get_logger

log = get_logger(__name__)

STACKS = ("litespark-dpo", "trl")


def write_pairs(path: Path, args, vocab: int, seed: int) -> dict:
    """``--pairs`` tokenised preference pairs as JSONL; returns their length statistics."""
    rng = np.random.default_rng(seed)
    n, seq = args.pairs, args.seq

    def lognormal(median: float) -> np.ndarray:
        return np.round(rng.lognormal(math.log(median), args.sigma, n)).astype(int)

    prompt = np.clip(lognormal(args.prompt_median), 8, seq // 2)
    chosen = np.clip(lognormal(args.response_median), 8, seq - prompt)
    rejected = np.clip(lognormal(args.response_median), 8, seq - prompt)

    def pairs():
        for p, c, r in zip(prompt, chosen, rejected):
            ids = rng.integers(0, vocab, p + c + r).tolist()  # below Llama 3's special tokens
            yield {"prompt_ids": ids[:p], "chosen_ids": ids[p : p + c], "rejected_ids": ids[p + c :]}

    write_jsonl(path, pairs())
    return {
        "pairs": n,
        "tokens": int((2 * prompt + chosen + rejected).sum()),
        "trained_tokens": int((chosen + rejected).sum()),
        "prompt": length_stats(prompt),
        "response": length_stats(np.concatenate([chosen, rejected])),
        "sequence": length_stats(np.concatenate([prompt + chosen, prompt + rejected])),
        "distribution": f"log-normal, sigma {args.sigma:g}: prompts median {args.prompt_median:g} cut to "
        f"8..{seq // 2}, responses median {args.response_median:g} cut to 8..{seq} - the prompt",
    }


def trl_pairs_per_step(args, stats: dict) -> int:
    """``--trl-global-batch``, or the pairs whose tokens fill Litespark's ``--global-batch`` rows of 2 x
    ``--seq`` tokens on average, a multiple of every TRL micro-batch."""
    if args.trl_global_batch:
        return args.trl_global_batch
    unit = math.lcm(*args.trl_micro_batches)
    pairs = args.global_batch * 2 * args.seq / (stats["tokens"] / stats["pairs"])
    return max(unit, unit * round(pairs / unit))


def _with_totals(result: dict) -> dict:
    """``result`` with trained tokens/s, tokens and pairs per step, and the reference + training rate."""
    ref = result["reference"]
    ref["tokens_per_s"] = ref["tokens"] / ref["seconds"]
    result["trained_tokens_per_s"] = result["trained_tokens"] / result["seconds"]
    result["tokens_per_step"] = result["tokens"] / result["steps_timed"]
    result["pairs_per_step"] = result["pairs"] / result["steps_timed"]
    result["total_tokens_per_s"] = 1 / (1 / ref["tokens_per_s"] + 1 / result["tokens_per_s"])
    result["total_trained_tokens_per_s"] = result["total_tokens_per_s"] * result["trained_tokens"] / result["tokens"]
    return result


def _litespark(args, data: Path, work: Path) -> dict:
    entry = ["litespark.dpo", "--preset", args.preset, "--data", str(data)]
    result, records = run_litespark("litespark-dpo", entry, args, work, 2 * args.seq)
    if result["status"] != "ok":
        return result
    reference = [r for r in records if r.get("split") == "reference"]
    if len(reference) != 1 or reference[0].get("cached"):
        return {"status": f"failed: expected one computed reference record in metrics.jsonl, got {reference}"}
    result["pairs"] = sum(r["pairs"] for r in timed_steps(records, args.warmup))
    result["reference"] = {k: reference[0][k] for k in ("seconds", "tokens", "pairs", "cached")}
    return _with_totals(result)


def _trl(args, data: Path, work: Path, pairs_per_step: int) -> dict:
    """TRL at each of ``--trl-micro-batches`` (see :func:`trl_by_micro_batch`): training from the
    fastest micro-batch's run, the reference pass from the run whose pass was fastest."""
    by_micro, attempts = trl_by_micro_batch("litespark.bench.dpo_vs_trl", args, data, work, pairs_per_step)
    if not by_micro:
        return {"status": "failed", "attempts": attempts}
    best = max(by_micro.values(), key=lambda x: x["tokens_per_s"])
    ref = max(by_micro.values(), key=lambda x: x["reference"]["tokens"] / x["reference"]["seconds"])
    result = dict(best, reference=ref["reference"], attempts=attempts)
    result["options"] += (
        f", per_device_train_batch_size={best['micro_batch']} and precompute_ref_batch_size="
        f"{ref['reference']['batch_size']} (the fastest of each)"
    )
    result["by_micro_batch"] = {
        str(m): {
            "tokens_per_s": x["tokens_per_s"],
            "reference_tokens_per_s": x["reference"]["tokens"] / x["reference"]["seconds"],
        }
        for m, x in by_micro.items()
    }
    return _with_totals(result)


def trl_worker(args) -> int:
    """One TRL ``DPOTrainer`` run on the pre-tokenised pairs: ``precompute_ref_log_probs=True`` (the
    reference pass runs in the trainer's constructor, over the whole data set, in batches of the
    micro-batch), the sigmoid loss with beta 0.1, ``max_length`` ``--seq``, ``bf16=True`` on an fp32
    model, PyTorch's SDPA, TRL's fused LM head (log-probabilities in chunks, without the full logits),
    no gradient checkpointing, fused AdamW, optionally Liger's kernels (TRL 1.16's DPO applies its
    layer kernels, not its fused linear cross-entropy).  ``padding_free`` is off: TRL 1.16 disabled it
    for DPO (it warns and pads), so each micro-batch's 2 x micro sequences are padded to the longest."""
    import shutil

    out = Path(args.trl_worker)
    # A fresh datasets cache: TRL caches the reference log-probs under the data's fingerprint and the
    # model's hash, which the next worker's model (the same seed) would find.
    cache = out.with_suffix(".datasets")
    shutil.rmtree(cache, ignore_errors=True)
    try:
        result = _train_with_trl(args, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


def _timed_dpo_trainer(cuda: bool, counts: dict):
    """TRL's ``DPOTrainer`` that takes the pairs as they are, times its reference pass and adds each
    micro-batch's trained and computed tokens to ``counts``."""
    import torch
    from trl import DPOTrainer

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class TimedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # The pairs are the columns TRL's preparation writes, which TRL 1.16 does not recognise (it
            # would extract a prompt from "chosen"); keep only its max_length filter.
            return dataset.filter(lambda pair: len(pair["prompt_ids"]) < args.max_length)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            self.ref_batches, self.ref_batch_size = 0, batch_size
            sync()
            start = time.perf_counter()
            dataset = super()._precompute_ref_logps(dataset, name, batch_size)
            sync()
            self.ref_seconds = time.perf_counter() - start
            return dataset

        def compute_ref_log_probs(self, model, inputs):
            self.ref_batches += 1
            return super().compute_ref_log_probs(model, inputs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            # The trained tokens are summed on the device, read once a step (after the timer's sync).
            counts["trained"] = counts["trained"] + inputs["completion_mask"].sum()
            counts["computed"] += inputs["input_ids"].numel()
            return super().training_step(model, inputs, num_items_in_batch)

    return TimedDPOTrainer


def _train_with_trl(args, cache: Path) -> dict:
    import torch
    from datasets import load_dataset
    from trl import DPOConfig

    cuda = torch.cuda.is_available()
    counts = {"trained": 0, "computed": 0}
    TimedDPOTrainer = _timed_dpo_trainer(cuda, counts)
    model = trl_model(args)
    dataset = load_dataset("json", data_files=str(args.data), split="train", cache_dir=str(cache))
    timer = step_timer(cuda, lambda state: (state.num_input_tokens_seen, int(counts["trained"]), counts["computed"]))
    cfg = DPOConfig(**trl_training_args(args, cuda), precompute_ref_log_probs=True, loss_type=["sigmoid"], beta=0.1)
    trainer = TimedDPOTrainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=llama3_word_tokenizer(model.config.vocab_size),
        callbacks=[timer],
    )
    if trainer.ref_batches == 0:
        raise RuntimeError(f"TRL read the reference log-probs from a cache ({cache}) instead of computing them")
    pairs = trainer.train_dataset
    prompt = np.array([len(x) for x in pairs["prompt_ids"]])
    responses = np.array([len(c) + len(r) for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"])])
    trainer.train()
    (t0, n0, trained0, computed0), (t1, n1, trained1, computed1) = timer.marks[args.warmup - 1], timer.marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = len(timer.marks) - args.warmup
    result = {
        "status": "ok",
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "seconds": t1 - t0,
        "tokens": n1 - n0,
        "trained_tokens": trained1 - trained0,
        "padding_tokens": (computed1 - computed0) - (n1 - n0),
        "pairs": steps * args.global_batch,
        "steps_timed": steps,
        "micro_batch": args.micro,
        "liger": args.liger,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "final_loss": losses[-1] if losses else None,
        "reference": {
            "seconds": trainer.ref_seconds,
            "tokens": int((2 * prompt).sum() + responses.sum()),
            "trained_tokens": int(responses.sum()),
            "pairs": len(prompt),
            "batch_size": trainer.ref_batch_size,
            "cached": False,
        },
        "options": f"precompute_ref_log_probs=True, loss_type=sigmoid, beta={cfg.beta}, max_length={cfg.max_length}, "
        f"padding_free=False (TRL 1.16 disabled it for DPO: each micro-batch is padded to its longest sequence), "
        f"bf16={cfg.bf16} on fp32 weights, attention sdpa, TRL's fused LM head for the log-probabilities, "
        f"gradient_checkpointing=False, optim={getattr(cfg.optim, 'value', cfg.optim)}, "
        f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} ({args.global_batch} pairs a step), "
        f"use_liger_kernel={args.liger} (layer kernels; TRL turns Liger's fused cross-entropy off for DPO), "
        f"dataloader_num_workers={cfg.dataloader_num_workers}",
    }
    return result


def to_markdown(report: dict) -> str:
    s, r = report["setup"], report["results"]
    d = s["data"]
    lines = [
        f"# DPO: Litespark vs TRL DPOTrainer ({report['gpu']}, {report['date']})",
        "",
        f"Model: Llama-3.2-3B shape ({s['layers']} layers), vocab {s['vocab']:,}, tied embeddings, RoPE factor 32; "
        f"sequences (prompt + response) of up to {s['seq']} tokens.  Litespark: rows of {2 * s['seq']} tokens "
        f"holding whole pairs, {s['global_batch']} rows a step; TRL: {s['trl_global_batch']} pairs a step "
        f"({s['trl_global_batch_rule']}); {s['steps']} steps ({s['warmup']} warm-up).",
        f"Data: {d['pairs']} pairs, {d['distribution']}; prompts median {d['prompt']['median']:.0f}, mean "
        f"{d['prompt']['mean']:.0f}, max {d['prompt']['max']}; responses median {d['response']['median']:.0f}, "
        f"mean {d['response']['mean']:.0f}, max {d['response']['max']}; sequences p90 {d['sequence']['p90']:.0f}, "
        f"max {d['sequence']['max']}; {d['tokens'] / d['pairs']:.0f} real tokens a pair.",
        "",
        "Training (the steps after the warm-up):",
        "",
        "| run | trained tokens/s | vs TRL | real tokens/s | vs TRL | tokens a step | pairs a step "
        "| MFU | peak memory GiB | padding computed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    trl = r.get("trl", {})
    trl_ok = trl.get("status") == "ok"

    def vs_trl(x: dict, key: str, sub: str | None = None) -> str:
        if not trl_ok:
            return "-"
        a, b = (x[sub][key], trl[sub][key]) if sub else (x[key], trl[key])
        return f"{a / b:.2f}x"

    ok = [n for n in STACKS if r.get(n, {}).get("status") == "ok"]
    for name in STACKS:
        x = r.get(name, {})
        if name not in ok:
            lines.append(f"| {name} | {x.get('status', 'not run')} | | | | | | | | |")
            continue
        mfu = f"{100 * x['mfu']:.1f}%" if x.get("mfu") else "-"
        pad = f"{x['padding_tokens'] / (x['tokens'] + x['padding_tokens']):.2%}"
        lines.append(
            f"| {name} | {x['trained_tokens_per_s']:,.0f} | {vs_trl(x, 'trained_tokens_per_s')} | "
            f"{x['tokens_per_s']:,.0f} | {vs_trl(x, 'tokens_per_s')} | {x['tokens_per_step']:,.0f} | "
            f"{x['pairs_per_step']:.1f} | {mfu} | {x.get('peak_memory_gib') or 0:.1f} | {pad} |"
        )
    lines += [
        "",
        "Reference pass (before step 0) and the total (training each pair once, with its reference pass: "
        "1 / (1 / reference + 1 / training), real tokens; trained tokens at the timed steps' share):",
        "",
        "| run | reference s (pairs) | reference tokens/s | vs TRL | total real tokens/s | total trained tokens/s "
        "| vs TRL |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ok:
        x, ref = r[name], r[name]["reference"]
        lines.append(
            f"| {name} | {ref['seconds']:.1f} ({ref['pairs']}) | {ref['tokens_per_s']:,.0f} | "
            f"{vs_trl(x, 'tokens_per_s', 'reference')} | {x['total_tokens_per_s']:,.0f} | "
            f"{x['total_trained_tokens_per_s']:,.0f} | {vs_trl(x, 'total_tokens_per_s')} |"
        )
    by_micro = trl.get("by_micro_batch")
    trl_lines = []
    if by_micro:
        each = "; ".join(
            f"{m}: {v['tokens_per_s']:,.0f} training, {v['reference_tokens_per_s']:,.0f} reference"
            for m, v in sorted(by_micro.items(), key=lambda kv: int(kv[0]))
        )
        trl_lines = ["", f"TRL real tokens/s by per_device_train_batch_size (= its reference batch): {each}."]
    failed = [a for a in trl.get("attempts", []) if str(a["micro_batch"]) not in (by_micro or {})]
    if failed:
        trl_lines.append(
            "TRL micro-batches that did not run: "
            + "; ".join(f"{a['micro_batch']} ({'Liger' if a['liger'] else 'plain'}): {a['error']}" for a in failed)
            + "."
        )
    lines += markdown_footer(report, trl_lines)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    r = report["results"]
    names = [n for n in reversed(STACKS) if r.get(n, {}).get("status") == "ok"]
    plot_bars(
        path,
        names,
        {
            "training": [r[n]["tokens_per_s"] for n in names],
            "reference pass": [r[n]["reference"]["tokens_per_s"] for n in names],
            "reference + training": [r[n]["total_tokens_per_s"] for n in names],
        },
        ["tab:orange", "tab:gray", "tab:blue"],
        "tokens/s, real tokens (one GPU)",
        f"DPO, Llama-3.2-3B shape, sequences <= {report['setup']['seq']}, {report['gpu']}",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litespark.bench.dpo_vs_trl", description=__doc__.splitlines()[0])
    add_bench_args(
        p,
        stacks=",".join(STACKS),
        seq_help="tokens per sequence (prompt + response); Litespark's rows hold a pair's two: 2 x --seq",
        global_batch=4,
        batch_help="Litespark's rows of 2 x --seq tokens (whole pairs) per optimizer step",
    )
    p.add_argument("--trl-global-batch", type=int, default=None, help="TRL's pairs per step (default: see above)")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--prompt-median", type=float, default=400.0)
    p.add_argument("--response-median", type=float, default=300.0)
    p.add_argument("--sigma", type=float, default=0.8)
    return bench_main(p, argv, trl_worker, _measure, to_markdown, plot)


def _measure(args, work: Path) -> tuple[dict, dict]:
    data = work / "pairs.jsonl"
    vocab = int(model_shape(args, args.seq)["model.vocab_size"])
    stats = write_pairs(data, args, min(vocab, 128000), seed=0)  # seeded: the same file
    log.info("data: %s", stats)
    trl_batch = trl_pairs_per_step(args, stats)
    results = measure_stacks(
        args.stacks.split(","),
        work,
        lambda stack: _trl(args, data, work, trl_batch) if stack == "trl" else _litespark(args, data, work),
    )
    rule = (
        "as given"
        if args.trl_global_batch
        else (
            f"Litespark's {args.global_batch} x {2 * args.seq} tokens over the mean pair's "
            f"{stats['tokens'] / stats['pairs']:.0f}, to a multiple of the micro-batches"
        )
    )
    return {"vocab": vocab, "trl_global_batch": trl_batch, "trl_global_batch_rule": rule, "data": stats}, results


if __name__ == "__main__":
    sys.exit(main())
