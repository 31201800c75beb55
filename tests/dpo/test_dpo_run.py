"""``python -m litespark.dpo`` end to end on CPU: the first steps equal TRL's ``DPOTrainer`` on the same
Hugging Face Llama, data and reference; a preference a tiny model can learn raises the held-out
margin; the reference pass is stored and reused; bad input is counted or refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from litespark.dpo.loss import METRICS
from tests.helpers.processes import read_metrics, run_module
from tests.helpers.sft_data import CHAT_PREFERENCES, IMPLICIT_PREFERENCES, TEXT_PREFERENCES, write_jsonl

pytestmark = pytest.mark.slow

PAIRS = [
    *CHAT_PREFERENCES,
    {
        "prompt": [{"role": "user", "content": "Say hello"}],
        "chosen": [{"role": "assistant", "content": "Hello there!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    },
    {
        "prompt": [{"role": "user", "content": "Is ice cold?"}],
        "chosen": [{"role": "assistant", "content": "Yes, ice is cold."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]
"""Conversational pairs (a TRL dataset holds one format)."""


def _dpo(data, run_dir, *args, hf_dir=None, expect=0):
    hf = ["--hf", str(hf_dir)] if hf_dir else []
    return run_module(
        "litespark.dpo", "--preset", "tiny", *hf, "--data", str(data), "--run-dir", str(run_dir), *args, expect=expect
    )


# The whole set in one row, one row per step: every step's batch is all the pairs, as TRL's batch of
# all of them is, whatever order either side draws them in.
ONE_BATCH = [
    "--set", "model.seq_length=1024", "--set", "data.micro_batch_size=1", "--set", "data.global_batch_size=1",
    "--set", "run.log_interval=1", "--set", "checkpoint.enabled=false", "--set", "optim.lr=5e-4",
]  # fmt: skip
STEPS = 6


def _trl_steps(hf_dir, run_dir, options: dict) -> list[dict]:
    """TRL 1.16 ``DPOTrainer`` on the same model, pairs and optimiser (AdamW with the run's settings and
    DeepSpeed's ``WarmupCosineLR`` of the run's config), a batch of every pair each step, the reference
    precomputed from the initial weights; each step's logged loss and metrics."""
    import torch
    import yaml
    from datasets import Dataset
    from deepspeed.runtime.lr_schedules import WarmupCosineLR
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from litespark.config import from_dict
    from litespark.runtime.deepspeed_config import scheduler_params, start_schedule

    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    o = cfg.optim
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
    )
    schedule = WarmupCosineLR(optimizer, **scheduler_params(cfg))
    start_schedule(schedule, cfg)
    args = DPOConfig(
        output_dir=str(run_dir.parent / "trl"),
        report_to=[],
        max_length=None,
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(PAIRS),
        max_steps=STEPS,
        logging_steps=1,
        max_grad_norm=o.clip_grad,
        precompute_ref_log_probs=True,
        save_strategy="no",
        seed=0,
        **options,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=AutoTokenizer.from_pretrained(hf_dir),
        optimizers=(optimizer, schedule),
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 0.1, "loss_type": ["sigmoid"]},
        {"beta": 0.2, "loss_type": ["ipo"]},
        {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    ],
    ids=["sigmoid", "ipo", "sigmoid+sft"],
)
def test_the_first_steps_equal_trl_dpo_trainer(hf_llama_dir, tmp_path, options):
    """Step 1 (policy = reference) equals TRL's to 1e-4 in the loss and every metric, and so do the
    next five steps' after AdamW updates (the schedule is DeepSpeed's ``WarmupCosineLR`` with the
    run's parameters on both sides).  Measured: 1e-6 relative on the losses and
    5e-6 on the margins, the two models computing the same function with other kernels (Megatron's
    fused QKV and RoPE against transformers'); the bound is 1e-4 so that a real difference, such as a
    softmax over the padded vocabulary (1% on these log-probabilities), fails."""
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    sets = [f"dpo.beta={options['beta']}", "dpo.loss_type=" + ",".join(options["loss_type"])]
    if "loss_weights" in options:
        sets.append("dpo.loss_weights=" + ",".join(map(str, options["loss_weights"])))
    run = tmp_path / "run"
    _dpo(
        data,
        run,
        "--train-iters",
        str(STEPS),
        *ONE_BATCH,
        *[a for s in sets for a in ("--set", s)],
        hf_dir=hf_llama_dir,
    )
    ours = read_metrics(run)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    assert all(r["pairs"] == len(PAIRS) for r in ours)  # every pair, once, in each step
    theirs = _trl_steps(hf_llama_dir, run, options)
    assert len(theirs) == STEPS
    first, trl_first = ours[0], theirs[0]
    assert first["loss"] == pytest.approx(trl_first["loss"], rel=1e-4, abs=1e-5)
    for name in METRICS:
        assert first[name] == pytest.approx(trl_first[name], rel=1e-4, abs=1e-5), name
    for step, (a, b) in enumerate(zip(ours[1:], theirs[1:]), start=2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), f"step {step}"
        for name in METRICS:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-4), f"step {step} {name}"
    # The comparison sees training: the policy moved away from the reference after step 1.
    assert abs(ours[-1]["rewards/margins"]) > 1e-3 and ours[-1]["loss"] != pytest.approx(ours[0]["loss"], abs=1e-4)


def _synthetic_pairs(n: int, seed: int, vocab: int = 250) -> list[dict]:
    """A preference a tiny model can learn: after any prompt, responses that start with 7 8 9 beat
    those that start with 17 18 19; prompts and the rest of each response are random."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        prompt = rng.integers(30, vocab, int(rng.integers(4, 12))).tolist()
        tail = rng.integers(30, vocab, int(rng.integers(2, 8))).tolist()
        pairs.append({"prompt_ids": prompt, "chosen_ids": [7, 8, 9, *tail], "rejected_ids": [17, 18, 19, *tail]})
    return pairs


def test_the_held_out_margin_rises_on_a_preference_a_tiny_model_can_learn(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", _synthetic_pairs(160, 0))
    run = tmp_path / "run"
    _dpo(
        data, run, "--train-iters", "30", "--set", "optim.lr=3e-3", "--set", "dpo.beta=0.5",
        "--set", "sft.valid_fraction=0.2", "--set", "run.eval_interval=10", "--set", "run.eval_iters=1",
        "--set", "model.seq_length=64", "--set", "data.micro_batch_size=2", "--set", "data.global_batch_size=4",
        "--set", "run.log_interval=10", "--set", "checkpoint.enabled=false",
    )  # fmt: skip
    valid = read_metrics(run, "valid")
    assert [r["step"] for r in valid] == [10, 20, 30]
    margins = [r["rewards/margins"] for r in valid]
    assert margins[0] < margins[1] < margins[2] and margins[2] > 1.0, margins
    assert valid[-1]["rewards/accuracies"] > 0.9 and valid[-1]["loss"] < 0.5
    reference = read_metrics(run, "reference")
    assert len(reference) == 1 and not reference[0]["cached"] and reference[0]["pairs"] == 160


def test_the_reference_pass_is_stored_reused_on_resume_and_across_runs_and_never_recomputed_late(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", _synthetic_pairs(24, 1))
    common = ["--set", "model.seq_length=64", "--set", "run.log_interval=2"]
    run = tmp_path / "run"
    _dpo(data, run, "--train-iters", "2", *common)
    own = run / "dpo_data" / "reference.npy"
    values = np.load(own)
    assert values.shape == (48,) and np.all(values < 0)  # a summed log-probability per sequence
    proc = _dpo(data, run, "--train-iters", "4", *common)
    assert "computed in" not in proc.stderr and f"read from {own}" in proc.stderr
    assert [r["cached"] for r in read_metrics(run, "reference")] == [False, True]
    assert np.array_equal(np.load(own), values)
    # Runs sharing a cache directory reuse each other's; another seed (another random start) does not.
    cache = ["--set", f"dpo.reference_cache={tmp_path / 'cache'}"]
    _dpo(data, tmp_path / "a", "--train-iters", "1", *common, *cache)
    proc = _dpo(data, tmp_path / "b", "--train-iters", "1", *common, *cache)
    assert f"read from {tmp_path / 'cache'}" in proc.stderr
    assert np.array_equal(np.load(tmp_path / "b" / "dpo_data" / "reference.npy"), values)  # same start, same data
    _dpo(data, tmp_path / "c", "--train-iters", "1", *common, *cache, "--set", "run.seed=7")
    assert len(list((tmp_path / "cache").glob("reference-*.npy"))) == 2
    assert len(list((tmp_path / "cache").glob("reference-*.json"))) == 2
    # A resume whose reference is gone cannot recompute it (the initial weights are gone): refused.
    own.unlink()
    proc = _dpo(data, run, "--train-iters", "6", *common, expect=2)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"litespark.dpo: error: dpo: no reference log-probabilities in {own} to resume with")


def _assert_same_weights(a, b):
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb)
    for name, tensor in wa.items():
        assert wb[name].to(tensor.dtype).equal(tensor), name


def test_bad_pairs_are_counted_the_export_is_the_model_and_unusable_input_is_one_line_and_exit_2(
    hf_llama_dir, tmp_path
):
    good = PAIRS + TEXT_PREFERENCES + IMPLICIT_PREFERENCES
    bad = [
        {"prompt": "Hi", "chosen": " there"},  # missing field
        {"prompt": "Hi", "chosen": " ", "rejected": " no"},  # empty response
        {"prompt": "Hi", "chosen": " same", "rejected": " same"},  # identical
        {"prompt": "word " * 200, "chosen": " a", "rejected": " b"},  # the prompt alone is too long
    ]
    data = write_jsonl(tmp_path / "prefs.jsonl", good + bad, ["not json"])
    run = tmp_path / "run"
    # One step inside a warm-up (DeepSpeed's first learning rate is 0): the export is the Hugging Face
    # model it started from.
    _dpo(
        data, run, "--train-iters", "1", "--set", "optim.warmup_iters=1", "--export-hf", str(tmp_path / "export"),
        hf_dir=hf_llama_dir,
    )  # fmt: skip
    _assert_same_weights(hf_llama_dir, tmp_path / "export")
    manifest = json.loads((run / "dpo_data" / "manifest.json").read_text())
    assert manifest["lines"] == len(good) + len(bad) + 1 and manifest["examples"] == len(good)
    assert manifest["dropped_too_long"] == 1
    assert sum(manifest["bad_lines"].values()) == 4
    reasons = " ".join(manifest["bad_lines"])
    assert "lacks rejected" in reasons and "'chosen' is empty" in reasons and "identical" in reasons
    assert "invalid JSON" in reasons
    # Nothing usable, a missing file, a bad loss setting: one line, exit 2, nothing trained.
    only_bad = write_jsonl(tmp_path / "bad.jsonl", bad)
    proc = _dpo(only_bad, tmp_path / "r1", hf_dir=hf_llama_dir, expect=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("litespark.dpo: error: DPO data")
    assert "nothing to train on" in proc.stderr
    proc = _dpo(tmp_path / "missing.jsonl", tmp_path / "r2", hf_dir=hf_llama_dir, expect=2)
    assert "no such file" in proc.stderr.strip().splitlines()[-1]
    proc = _dpo(data, tmp_path / "r3", "--set", "dpo.loss_type=kto", hf_dir=hf_llama_dir, expect=2)
    assert "dpo.loss_type must list some of sigmoid" in proc.stderr.strip().splitlines()[-1]
    proc = _dpo(data, tmp_path / "r4", "--set", "dpo.label_smoothing=0.1", hf_dir=hf_llama_dir, expect=2)
    assert "dpo.label_smoothing is used by the robust loss only" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4").exists()
    # Text pairs without a tokenizer cannot be tokenised: every line says so, and the run is refused.
    proc = _dpo(data, tmp_path / "r5", expect=2)
    assert "need a tokenizer" in proc.stderr


# ------------------------------------------------------------------------------------------------
# What a step holds (in process)


def test_pairs_are_never_split_and_a_step_counts_its_pairs(tmp_path):
    from litespark.config import apply_overrides, resolve
    from litespark.config.presets import get_preset
    from litespark.dpo.batches import DPOData
    from litespark.sft.prepare import _ensure_cache, read_corpus

    data = write_jsonl(tmp_path / "prefs.jsonl", _synthetic_pairs(40, 2))
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "data.source=dpo",
            f"sft.data={data}",
            f"run.run_dir={tmp_path / 'run'}",
            "model.seq_length=64",
            "data.micro_batch_size=2",
            "data.global_batch_size=4",
        ],
    )
    _ensure_cache(cfg, tmp_path / "run" / "dpo_data")
    dpo = DPOData(read_corpus(tmp_path / "run" / "dpo_data"), resolve(cfg))
    dpo.reference = np.zeros(len(dpo.corpus), dtype=np.float32)
    seen = []
    for step, micro_batches in dpo.train_batches(0, 1, 0, __import__("torch").device("cpu")):
        if step == 3:
            break
        pairs = 0
        for batch in micro_batches:
            pref = batch["preference"]
            owners = pref.response[pref.response >= 0]
            n_seq = len(pref.response_tokens)
            assert n_seq % 2 == 0 and set(owners.tolist()) == set(range(n_seq))  # both of every pair
            # Each sequence's response positions are as many as its response tokens.
            counts = np.bincount(owners.numpy(), minlength=n_seq)
            assert counts.tolist() == pref.response_tokens.int().tolist()
            assert pref.pairs == dpo.step_pairs(step)[0] / 2
            pairs += n_seq // 2
        seen.append(pairs)
        assert pairs == dpo.step_pairs(step)[0]
    assert all(n >= 4 for n in seen)  # a row of 64 tokens holds at least one pair of <= 32-token sequences


@pytest.mark.parametrize("recipe, refused", [("delayed", True), ("tensorwise", True), ("blockwise", False)])
def test_dpo_in_fp8_needs_block_scales_and_its_entry_point_chooses_them(recipe, refused):
    """Per-tensor FP8 scales make a sequence's log-probabilities depend on its micro-batch, so the policy
    would not reproduce the reference pass (measured on an H200: docs/post_training.md)."""
    import argparse

    from litespark.config import ConfigError, apply_overrides, validate
    from litespark.config.presets import get_preset
    from litespark.sft.__main__ import build_sft_config

    cfg = apply_overrides(
        get_preset("llama-3b"), ["data.source=dpo", "sft.data=p.jsonl", f"precision.fp8_recipe={recipe}"]
    )
    if refused:
        with pytest.raises(ConfigError, match=f"needs precision.fp8_recipe=blockwise, not {recipe}"):
            validate(cfg)
    else:
        validate(cfg)
    from litespark.dpo.__main__ import DPO_DEFAULTS

    args = argparse.Namespace(
        preset="llama-3b",
        data="p.jsonl",
        hf=None,
        tokenizer=None,
        train_iters=None,
        run_dir=None,
        config=None,
        overrides=[],
    )
    assert build_sft_config(args, "dpo", DPO_DEFAULTS).precision.fp8_recipe == "blockwise"


def test_two_data_parallel_ranks_train_as_one_and_share_the_reference_through_rank_0(tmp_path):
    """torchrun with 2 processes (DP 2): each rank computes the reference of its share of the rows
    and runs its half of each step's micro-batches; the losses and metrics are the one-process run's
    (to reduction-order accuracy).  A second DP 2 run with the same shared cache gets the reference
    from rank 0 (which reads it) instead of computing it, and trains the same."""
    import subprocess
    import sys

    from litespark.runtime.distributed import free_port
    from tests.helpers.processes import ROOT, train_env

    data = write_jsonl(tmp_path / "prefs.jsonl", _synthetic_pairs(64, 3))
    common = ["--train-iters", "6", "--set", "run.log_interval=1", "--set", "optim.lr=3e-3"]
    common += ["--set", "model.seq_length=64", "--set", "dpo.beta=0.5"]
    _dpo(data, tmp_path / "one", *common)

    def two(run: str):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1"]
        cmd += [f"--master-port={free_port()}", "-m", "litespark.dpo", "--preset", "tiny", "--data", str(data)]
        cmd += ["--run-dir", str(tmp_path / run), *common, "--set", f"dpo.reference_cache={tmp_path / 'cache'}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    two("two")
    proc = two("three")
    assert "computed in" not in proc.stderr and "read from" in proc.stderr
    one = read_metrics(tmp_path / "one")
    for run in ("two", "three"):
        other = read_metrics(tmp_path / run)
        assert [r["step"] for r in other] == [r["step"] for r in one] == [1, 2, 3, 4, 5, 6]
        for a, b in zip(one, other):
            assert (a["tokens"], a["pairs"]) == (b["tokens"], b["pairs"])
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
            for name in METRICS:
                assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-5), (run, name)
    assert one[-1]["rewards/margins"] > 0.1  # it trained: the comparison is not of untouched weights
