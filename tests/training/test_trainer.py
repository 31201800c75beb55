"""The training loop on CPU (gloo): ZeRO stages, TP x DP, accumulation, resume, fallback, what it refuses.
The tests that train do so in subprocesses, as a user would (marked slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from litespark.config import ConfigError, apply_overrides
from litespark.config.presets import get_preset
from tests.helpers.processes import ROOT, read_metrics, run_training, train_cmd, train_env

# Small enough for 2 CPU cores; mock data (Megatron's MockGPTDataset), fp32 so runs are exact.
FAST = ["data.source=mock", "run.log_interval=1", "optim.warmup_iters=2", "optim.decay_iters=100"]


def _losses(run_dir) -> dict[int, float]:
    out = {}
    for record in read_metrics(run_dir):
        out[record["step"]] = record["loss"]  # a step logged twice (before a kill and after resume) keeps the last
    return out


@pytest.mark.slow
def test_zero_stages_on_two_processes_agree_and_learn(tmp_path):
    runs = {}
    for stage in (1, 2, 3):
        run_training(tmp_path / f"z{stage}", *FAST, "run.train_iters=12", f"parallel.zero_stage={stage}", nproc=2)
        runs[stage] = _losses(tmp_path / f"z{stage}")
    one = runs[1]
    assert sorted(one) == list(range(1, 13))
    assert one[12] < one[1] - 0.3, one
    for stage in (2, 3):
        for step in one:
            assert runs[stage][step] == pytest.approx(one[step], rel=1e-5), (stage, step, one[step], runs[stage][step])


@pytest.mark.slow
def test_tp2_dp2_on_four_processes_matches_dp2(tmp_path):
    run_training(tmp_path / "dp2", *FAST, "run.train_iters=6", nproc=2)
    run_training(tmp_path / "tp2dp2", *FAST, "run.train_iters=6", "parallel.tensor_parallel=2", nproc=4)
    dp, tpdp = _losses(tmp_path / "dp2"), _losses(tmp_path / "tp2dp2")
    for step in dp:
        assert tpdp[step] == pytest.approx(dp[step], rel=1e-4), (step, dp[step], tpdp[step])
    env = (tmp_path / "tp2dp2" / "environment.json").read_text()
    assert '"tensor_parallel": 2' in env and '"data_parallel": 2' in env


@pytest.mark.slow
def test_gradient_accumulation_equals_a_bigger_micro_batch(tmp_path):
    run_training(tmp_path / "ga", *FAST, "run.train_iters=5", "data.micro_batch_size=2", "data.global_batch_size=8")
    run_training(tmp_path / "big", *FAST, "run.train_iters=5", "data.micro_batch_size=8", "data.global_batch_size=8")
    ga, big = _losses(tmp_path / "ga"), _losses(tmp_path / "big")
    assert ga.keys() == big.keys() == set(range(1, 6))
    for step in ga:
        assert ga[step] == pytest.approx(big[step], rel=1e-5, abs=1e-6), (step, ga[step], big[step])


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    sets = [
        *FAST,
        "run.train_iters=60",
        "checkpoint.save_interval=10",
        "data.micro_batch_size=8",
        "data.global_batch_size=16",
    ]
    run_training(tmp_path / "ref", *sets)
    reference = _losses(tmp_path / "ref")

    victim = tmp_path / "victim"
    args = ["--preset", "tiny", "--run-dir", str(victim)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(
        train_cmd(1, *args),
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    killed_after = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (victim / "metrics.jsonl").exists():
            steps = [r["step"] for r in read_metrics(victim)]
            if steps and steps[-1] >= 25:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_after = steps[-1]
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_after is not None and killed_after < 60, "the run ended before it could be killed"
    resumed = run_training(victim, *sets)
    assert "resumed from" in resumed.stderr
    start = int(resumed.stderr.split("resumed from")[1].split("(step ")[1].split(")")[0])
    assert killed_after - start <= 10, f"lost {killed_after - start} steps, more than the save interval"
    after = _losses(victim)
    assert sorted(after) == list(range(1, 61))
    for step in range(1, 61):
        assert after[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), (step, after[step], reference[step])


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    sets = [*FAST, "run.train_iters=20", "checkpoint.save_interval=10", "checkpoint.keep_last=3"]
    run_training(tmp_path, *sets)
    latest = tmp_path / "checkpoints" / "step_00000020"
    optim = next(latest.glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])  # truncated
    proc = run_training(tmp_path, *[s for s in sets if not s.startswith("run.train_iters")], "run.train_iters=25")
    assert "step_00000020 cannot be used" in proc.stderr and "the manifest says" in proc.stderr
    assert "resumed from" in proc.stderr and "(step 10)" in proc.stderr
    # Random bytes written in place, size unchanged: torch.load still reads the file (the numbers are
    # garbage), so only the content digest recorded at save time can tell.
    optim = next((tmp_path / "checkpoints" / "step_00000025").glob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = os.urandom(64)
    optim.write_bytes(bytes(data))
    proc = run_training(tmp_path, *[s for s in sets if not s.startswith("run.train_iters")], "run.train_iters=26")
    warning = [line for line in proc.stderr.splitlines() if "step_00000025 cannot be used" in line]
    assert len(warning) == 1 and "is damaged (its content digest differs" in warning[0], proc.stderr
    assert "(step 20)" in proc.stderr
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert all(loss == loss and loss < 10 for loss in losses), losses  # no NaN from the damaged state


@pytest.mark.slow
def test_sigusr1_checkpoints_and_exits_75_then_resumes(tmp_path):
    sets = [*FAST, "run.train_iters=400", "data.micro_batch_size=8", "data.global_batch_size=16"]
    args = ["--preset", "tiny", "--run-dir", str(tmp_path)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(
        train_cmd(1, *args), cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if (tmp_path / "metrics.jsonl").exists() and read_metrics(tmp_path):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "preemption signal" in err
    stopped = max(_losses(tmp_path))
    assert stopped < 400
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    resumed = run_training(tmp_path, *[s for s in sets if "train_iters" not in s], f"run.train_iters={stopped + 3}")
    assert f"(step {stopped})" in resumed.stderr
    assert max(_losses(tmp_path)) == stopped + 3


@pytest.mark.slow
def test_metrics_file_has_the_promised_fields(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=4", "run.eval_interval=2", "run.eval_iters=2")
    record = read_metrics(tmp_path)[-1]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s_per_gpu",
        "tflops_per_gpu",
        "peak_rss_gib",
        "tokens",
        "seconds",
    ):
        assert key in record, key
    assert "energy_j" not in record and "mfu" not in record  # no NVML, no GPU peak on CPU: absent, not zero
    valid = read_metrics(tmp_path, "valid")
    assert [r["step"] for r in valid] == [2, 4]
    assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "config.yaml").is_file()
    # The config as given (automatic fields null) and, next to it, what the run decided from it.
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["kernels"]["cuda_graphs"] is None and config["precision"]["fp32_grad_accumulation"] is None
    plan = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert "config" not in plan and plan["world_size"] == 1 and plan["data_parallel"] == 1
    assert plan["backend"] == "torch" and plan["micro_batch_size"] == config["data"]["micro_batch_size"]
    assert plan["cuda_graphs"] is False and plan["fp32_grad_accumulation"] is False


@pytest.mark.slow
def test_resume_refuses_optimizer_state_with_other_parameter_groups(tmp_path):
    run_training(tmp_path, *FAST, "run.train_iters=4", "checkpoint.save_interval=4")
    proc = run_training(
        tmp_path,
        *FAST,
        "run.train_iters=6",
        "checkpoint.save_interval=4",
        "parallel.zero_sub_group_size=20000",
        expect=2,
    )
    error = [line for line in proc.stderr.splitlines() if "error:" in line][-1]
    assert error.endswith(
        "step_00000004: its optimizer state has 2 parameter groups, this run's optimizer 9 "
        "(parallel.zero_sub_group_size differs from the run that saved it)"
    ), error
    resumed = run_training(tmp_path, *FAST, "run.train_iters=6", "checkpoint.save_interval=4")
    assert "resumed from" in resumed.stderr and "(step 4)" in resumed.stderr


@pytest.mark.slow
def test_checkpoint_load_initialises_weights_only(tmp_path):
    run_training(tmp_path / "base", *FAST, "run.train_iters=20")
    run_training(tmp_path / "fresh", *FAST, "run.train_iters=2")
    warm = run_training(tmp_path / "warm", *FAST, "run.train_iters=2", f"checkpoint.load={tmp_path / 'base'}")
    assert "initialised weights from" in warm.stderr and "fresh optimizer" in warm.stderr
    base, cold, init = _losses(tmp_path / "base"), _losses(tmp_path / "fresh"), _losses(tmp_path / "warm")
    assert sorted(init) == [1, 2]  # starts at step 0, not at the loaded step 20
    assert init[1] < cold[1] - 0.5 and init[1] == pytest.approx(base[20], abs=0.3)  # the trained weights
    missing = run_training(
        tmp_path / "none", *FAST, "run.train_iters=2", f"checkpoint.load={tmp_path / 'nope'}", expect=2
    )
    assert [line for line in missing.stderr.splitlines() if "error:" in line][-1].endswith(
        f"checkpoint.load: no usable checkpoint under {tmp_path / 'nope'}/checkpoints"
    )


@pytest.mark.slow
def test_resume_refuses_optimizer_state_of_the_other_zero1_optimizer(tmp_path):
    """precision.fp32_grad_accumulation switches ZeRO-1 to DeepSpeed's BF16_Optimizer, whose state has
    another layout: a resume across the switch is refused in one line; the same setting resumes."""
    bf16 = [*FAST, "precision.bf16=true", "checkpoint.save_interval=4"]
    run_training(tmp_path, *bf16, "run.train_iters=4", "precision.fp32_grad_accumulation=true")
    proc = run_training(tmp_path, *bf16, "run.train_iters=6", "precision.fp32_grad_accumulation=false", expect=2)
    error = [line for line in proc.stderr.splitlines() if "error:" in line][-1]
    assert error.endswith(
        "step_00000004: its optimizer state is BF16_Optimizer's, this run uses DeepSpeedZeroOptimizer "
        "(precision.fp32_grad_accumulation differs from the run that saved it)"
    ), error
    resumed = run_training(tmp_path, *bf16, "run.train_iters=6", "precision.fp32_grad_accumulation=true")
    assert "resumed from" in resumed.stderr and "(step 4)" in resumed.stderr
    assert max(_losses(tmp_path)) == 6


def test_sequence_parallel_is_refused_by_the_trainer(tmp_path):
    from litespark.config import resolve
    from litespark.training.loop import train

    cfg = apply_overrides(
        get_preset("tiny"), ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true", "kernels.backend=te"]
    )
    plan = resolve(cfg, 2)  # as a TE host would allow
    with pytest.raises(ConfigError, match="parallel.sequence_parallel is not supported by the DeepSpeed trainer"):
        train(plan)
