"""``python -m litespark.sft`` end to end on CPU: a Hugging Face Llama fine-tuned on conversations, its
export generating the replies; resume and refusals; and what a step computes (packed micro-batches,
the loss over every trained token, the metrics' token counts)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.processes import read_metrics, run_module
from tests.helpers.sft_data import CONVERSATIONS, sft_config, write_jsonl

pytestmark = pytest.mark.slow


def _sft(hf_dir, data, run_dir, *args, expect=0):
    return run_module(
        "litespark.sft", "--preset", "tiny", "--hf", str(hf_dir), "--data", str(data), "--run-dir", str(run_dir),
        *args, expect=expect,
    )  # fmt: skip


def test_fine_tuned_export_generates_the_assistant_replies(hf_llama_dir, tmp_path):
    """A few conversations learnt by heart: after export, ``transformers`` greedy-generates each reply
    from its prompt (the chat template with the generation prompt), and the untrained model does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS, extra_lines=["not json"])
    out = tmp_path / "export"
    proc = _sft(
        hf_llama_dir, data, tmp_path / "run", "--train-iters", "60", "--set", "optim.lr=3e-3",
        "--set", "run.log_interval=20", "--export-hf", str(out),
    )  # fmt: skip
    assert "3 examples from 4 lines" in proc.stderr and "1 bad lines (line 4: invalid JSON" in proc.stderr
    tok = AutoTokenizer.from_pretrained(out)

    def replies(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        got, want = [], []
        for conversation in CONVERSATIONS:
            messages = conversation["messages"]
            prompt = tok.apply_chat_template(
                messages[:-1], add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            ids = model.generate(**prompt, max_new_tokens=24, do_sample=False)[0, prompt["input_ids"].shape[1] :]
            got.append(tok.decode(ids))
            want.append(messages[-1]["content"].strip() + "<|eot_id|>")
        return got, want

    got, want = replies(out)
    assert got == want
    before, _ = replies(hf_llama_dir)
    assert not any(b == w for b, w in zip(before, want))
    # The metrics count real tokens and say what was padding and what was trained.
    train = [r for r in read_metrics(tmp_path / "run") if not r.get("warmup")]
    assert train and all(r["padding_tokens"] < 16 * 2 * 10 and r["trained_tokens"] < r["tokens"] for r in train)


def test_a_second_start_resumes_on_the_same_data_and_refuses_other_data(hf_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 4)
    run = tmp_path / "run"
    common = ["--set", "run.log_interval=5", "--set", "sft.valid_fraction=0.25", "--set", "run.eval_interval=5"]
    _sft(hf_llama_dir, data, run, "--train-iters", "10", *common)
    assert len(read_metrics(run, "valid")) == 2
    proc = _sft(hf_llama_dir, data, run, "--train-iters", "15", *common)
    assert "tokenised" not in proc.stderr and "converted" not in proc.stderr  # prepared once, at the first start
    assert [r["step"] for r in read_metrics(run, "valid")] == [5, 10, 15]
    write_jsonl(data, CONVERSATIONS * 5)
    proc = _sft(hf_llama_dir, data, run, "--train-iters", "20", *common, expect=2)
    last = proc.stderr.strip().splitlines()[-1]
    assert "sft_data was prepared from other data than this run's" in last, last


def test_unusable_input_is_one_line_and_exit_2(hf_llama_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "robot", "content": "hi"}]}], ["{"])
    proc = _sft(hf_llama_dir, bad, tmp_path / "run1", expect=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("litespark.sft: error: SFT data")
    assert "nothing to train on" in proc.stderr
    proc = _sft(hf_llama_dir, tmp_path / "missing.jsonl", tmp_path / "run2", expect=2)
    assert "no such file" in proc.stderr.strip().splitlines()[-1]
    proc = _sft(
        hf_llama_dir,
        bad,
        tmp_path / "run4",
        "--export-hf",
        str(tmp_path / "x"),
        "--set",
        "checkpoint.enabled=false",
        expect=2,
    )
    assert "--export-hf exports the run's last checkpoint: it needs checkpoint.enabled=true" in proc.stderr
    assert not (tmp_path / "run4").exists()  # refused before anything ran
    proc = _sft(hf_llama_dir, bad, tmp_path / "run3", "--set", "kernels.cuda_graphs=true", expect=2)
    assert "kernels.cuda_graphs=true cannot run data.source=sft" in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------
# What a step computes (in process)


def _sft_data(tokenizer, tmp_path, *sets):
    from litespark.config import resolve
    from litespark.sft.batches import SFTData
    from litespark.sft.prepare import _ensure_cache, read_corpus

    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    rows = [c for i in range(6) for c in CONVERSATIONS if i or c is CONVERSATIONS[0]]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = sft_config(tmp_path, data, tok_dir, f"model.vocab_size={len(tokenizer)}", *sets)
    plan = resolve(cfg)
    _ensure_cache(cfg, tmp_path / "run" / "sft_data")
    return plan, SFTData(read_corpus(tmp_path / "run" / "sft_data"), plan)


def test_a_step_counts_what_its_micro_batches_hold_and_a_resume_sees_the_same_batches(tokenizer, tmp_path):
    _, data = _sft_data(tokenizer, tmp_path, "data.micro_batch_size=2", "data.global_batch_size=8")
    cpu = torch.device("cpu")
    dp = 2  # the step's rows over two data-parallel ranks: together they hold the step's counts
    for step in (0, 3, 7):
        counts = data.step_tokens(step)
        real = padding = trained = 0
        for rank in range(dp):
            data.micro_batches_per_step = 4
            _, batches = next(iter(data.train_batches(step, dp, rank, cpu)))
            for b in batches:
                real += b["real_tokens"]
                padding += b["padding_tokens"]
                trained += int(b["loss_mask"].sum())
                assert b["tokens"].shape[1] % 16 == 0 and b["tokens"].shape[1] <= 2 * 96 + 15
                assert b["loss_normalizer"] == counts.trained / 4
        assert (real, padding, trained) == (counts.real, counts.padding, counts.trained)
    # A start at step 5 (a resume) runs the batches that steps 5 to 7 of a start at 0 run.
    resumed = [b for (_, (_, bs)) in zip(range(3), data.train_batches(5, 1, 0, cpu)) for b in bs]
    straight = [b for (_, (step, bs)) in zip(range(8), data.train_batches(0, 1, 0, cpu)) if step >= 5 for b in bs]
    assert len(resumed) == len(straight) == 12
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(resumed, straight))
    assert not torch.equal(resumed[0]["tokens"], straight[-1]["tokens"])


def test_the_step_loss_is_the_mean_over_every_trained_token(tokenizer, tmp_path, dist_world_1):
    """Micro-batches of different numbers of targets weigh by their targets, as one batch would."""
    from litespark.model.build import build_model
    from litespark.runtime.distributed import init_distributed
    from litespark.training.step import forward_loss

    plan, data = _sft_data(tokenizer, tmp_path, "data.micro_batch_size=1", "data.global_batch_size=4")
    init_distributed(plan.tensor_parallel, 1234)
    model = build_model(plan).float().eval()
    _, batches = next(iter(data.train_batches(0, 1, 0, torch.device("cpu"))))
    assert len({int(b["loss_mask"].sum()) for b in batches}) > 1  # uneven micro-batches
    with torch.no_grad():
        step_loss = sum(forward_loss(model, b) for b in batches) / len(batches)  # DeepSpeed's accumulation
        total = count = 0.0
        for b in batches:
            per_token = model(
                input_ids=b["tokens"], position_ids=b["position_ids"], attention_mask=None,
                labels=b["labels"], packed_seq_params=b["packed_seq_params"],
            )  # fmt: skip
            total += float((per_token * b["loss_mask"]).sum())
            count += float(b["loss_mask"].sum())
    assert float(step_loss) == pytest.approx(total / count, rel=1e-6)


def test_the_sft_job_script_preflights_and_plans_with_the_real_entry_point(hf_llama_dir, tmp_path):
    """``slurm/sft.sh --dry-run`` as a user runs it before submitting: the preflight line names the
    model and the data, the printed config is the imported model's."""
    import subprocess
    import sys

    from tests.helpers.processes import ROOT, train_env

    data = write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS)
    env = dict(
        train_env(),
        LITESPARK_HOME=str(ROOT),
        LITESPARK_PYTHON=sys.executable,
        LITESPARK_LAUNCHER="torchrun",
        LITESPARK_GPUS_PER_NODE="1",
        LITESPARK_PRESET="tiny",
        LITESPARK_RUN_DIR=str(tmp_path / "run"),
        LITESPARK_HF=str(hf_llama_dir),
        LITESPARK_DATA=str(data),
        LITESPARK_SET="data.global_batch_size=8",
    )
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", "slurm/sft.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SFT data {data}, from {hf_llama_dir}" in proc.stdout, proc.stdout
    assert "hidden_size: 64" in proc.stdout and "source: sft" in proc.stdout
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # a dry run writes nothing
    missing = dict(env, LITESPARK_DATA=str(tmp_path / "none.jsonl"))
    proc = subprocess.run(["bash", "slurm/sft.sh", "--dry-run"], cwd=ROOT, env=missing, capture_output=True, text=True)
    assert proc.returncode == 2 and "sft.data:" in proc.stderr and "does not exist" in proc.stderr, proc.stderr


def test_two_data_parallel_ranks_train_as_one_with_the_same_global_batch(hf_llama_dir, tmp_path):
    """torchrun with 2 processes (DP 2): rank 0 prepares the data and the weights while the other
    waits, each rank runs its half of every step's rows, and the losses are the one-process run's
    (the global batch's mean over its trained tokens, to reduction-order accuracy)."""
    import subprocess
    import sys

    from litespark.runtime.distributed import free_port
    from tests.helpers.processes import ROOT, train_env

    data = write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 4)
    common = ["--train-iters", "6", "--set", "run.log_interval=1", "--set", "optim.lr=3e-3"]
    _sft(hf_llama_dir, data, tmp_path / "one", *common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1"]
    cmd += [f"--master-port={free_port()}", "-m", "litespark.sft", "--preset", "tiny", "--hf", str(hf_llama_dir)]
    cmd += ["--data", str(data), "--run-dir", str(tmp_path / "two"), *common]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two):
        assert (a["tokens"], a["trained_tokens"], a["padding_tokens"]) == (
            b["tokens"],
            b["trained_tokens"],
            b["padding_tokens"],
        )
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert one[-1]["loss"] < one[0]["loss"] - 0.1  # it trained: the comparison is not of untouched weights
