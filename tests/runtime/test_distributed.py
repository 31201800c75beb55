"""Process groups: the launcher environment and the mpu adapter DeepSpeed gets (litespark.runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

from litespark.runtime.distributed import expand_nodelist, launched_world_size, launcher_env


def test_the_world_size_is_known_before_the_process_group_as_the_launcher_will_set_it():
    # The plan is resolved before init_distributed: under srun WORLD_SIZE is not set yet.
    srun = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "7"}
    assert launched_world_size(srun) == 4 == int(launcher_env(srun)["WORLD_SIZE"])
    torchrun = {"RANK": "1", "WORLD_SIZE": "8", "MASTER_PORT": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert launched_world_size(torchrun) == 8 == int(launcher_env(torchrun)["WORLD_SIZE"])
    assert launched_world_size({"WORLD_SIZE": "32"}) == 32  # a job script's --print-config
    assert launched_world_size({}) == 1


def test_launcher_env_from_slurm():
    env = launcher_env(
        {
            "SLURM_PROCID": "9",
            "SLURM_NTASKS": "16",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[007-008]",
            "SLURM_JOB_ID": "4242",
        }
    )
    assert env == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007", "MASTER_PORT": "24242"}
    torchrun = launcher_env(
        {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "5", "SLURM_PROCID": "0"}
    )
    assert torchrun["RANK"] == "1" and torchrun["MASTER_ADDR"] == "h"  # torchrun's variables win
    single = launcher_env({"RANK": "0", "WORLD_SIZE": "1"})  # leftovers of a single process: still runs
    assert single["MASTER_ADDR"] == "127.0.0.1" and single["MASTER_PORT"].isdigit()
    with pytest.raises(RuntimeError, match="MASTER_PORT is not"):
        launcher_env({"RANK": "0", "WORLD_SIZE": "2"})
    assert expand_nodelist("a[1-2,5],b,c[09-10]") == ["a1", "a2", "a5", "b", "c09", "c10"]


def test_mpu_maps_model_parallel_to_tensor_parallel(dist_world_1):
    from megatron.core import parallel_state as ps

    from litespark.runtime.distributed import init_distributed
    from litespark.runtime.megatron_mpu import MegatronMPU

    init_distributed(tensor_parallel=1, seed=0)
    mpu = MegatronMPU()
    assert mpu.get_model_parallel_group() is ps.get_tensor_model_parallel_group()
    assert mpu.get_data_parallel_group() is ps.get_data_parallel_group()
    assert (mpu.get_model_parallel_world_size(), mpu.get_data_parallel_world_size()) == (1, 1)
    assert mpu.get_data_parallel_group_ranks() == [0]


@pytest.mark.slow
def test_ranks_that_resolved_different_micro_batches_are_refused_on_every_rank(tmp_path):
    """The automatic micro-batch is resolved per process from its own GPU; a mixed allocation would
    have ranks disagree and hang in ZeRO's reductions: every rank refuses in one line instead."""
    from tests.helpers.processes import torchrun

    for differ in (False, True):
        out = tmp_path / f"differ{differ}"
        torchrun("tests/helpers/workers/micro_batch_worker.py", 2, "--out", str(out), *(["--differ"] if differ else []))
        said = [Path(f"{out}.rank{r}").read_text() for r in range(2)]
        if differ:
            assert all("ranks chose different automatic micro-batches (1 to 2" in s for s in said), said
        else:
            assert said == ["ok", "ok"]
