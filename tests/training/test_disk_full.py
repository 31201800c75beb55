"""A checkpoint that does not fit on the disk: one line naming the filesystem and the space, exit 74
(which the job scripts do not requeue), the previous checkpoint intact, nothing left holding space,
and the run resumes once there is room."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.disks import mounted_tmpfs, resize_tmpfs
from tests.helpers.processes import read_metrics, run_training
from tests.training.test_data import write_indexed

pytestmark = pytest.mark.slow


def test_a_full_disk_during_a_save_stops_with_one_line_and_the_run_resumes(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"  # indexed data outside the small disk: its sample cache is small
    write_indexed(data, [rng.integers(3, 512, size=rng.integers(30, 300)).tolist() for _ in range(200)])
    sets = [
        "data.source=indexed",
        f"data.prefixes={data}",
        "run.log_interval=1",
        "checkpoint.save_interval=2",
        "checkpoint.keep_last=1",
    ]
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:  # room for one checkpoint of the tiny model, not two
        run_dir = disk / "run"
        proc = run_training(run_dir, *sets, "run.train_iters=4", expect=74)
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line or "error:" in line]
        assert len(errors) == 1, proc.stderr
        assert "No space left on device" in errors[0] and f"on {disk}" in errors[0] and "needs about" in errors[0]
        assert "the previous checkpoint is intact" in errors[0] and "(exit 74)" in errors[0]
        assert "Traceback" not in proc.stderr
        checkpoints = run_dir / "checkpoints"
        entries = sorted(p.name for p in checkpoints.iterdir() if not p.name.endswith(".py"))  # DeepSpeed's scripts
        assert entries == ["latest", "step_00000002"], entries  # the unfinished save is gone
        resize_tmpfs(disk, "64m")
        resumed = run_training(run_dir, *sets, "run.train_iters=4")
        assert "resumed from" in resumed.stderr and "(step 2)" in resumed.stderr
        assert [r["step"] for r in read_metrics(run_dir)][-2:] == [3, 4]
