"""A real two-node Slurm cluster on this one machine, for tests of the project's job scripts.

Debian's ``slurmctld slurmd slurm-client munge`` are used when installed; when missing they are
installed with apt only where the caller allows it (``LITESPARK_TEST_APT_INSTALL=1``, as ``.ci/run``
sets it) and the process is root, otherwise the tests skip with the reason;
``munged`` runs with a generated key; ``slurmctld`` and two ``slurmd`` (``node1``, ``node2``, the
same host on two ports) run from a private directory with their own config, and are stopped by PID
when the cluster is closed, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
MUNGE_SOCKET_DIR = Path("/run/munge")


INSTALL_SWITCH = "LITESPARK_TEST_APT_INSTALL"
"""Set to 1 to let the tests install the packages with apt-get (CI does; a developer's machine is
left alone unless asked)."""


def ensure_installed() -> str | None:
    """None when Slurm and munge are usable, else why not (a reason to skip)."""
    if all(shutil.which(b) for b in ("sbatch", "slurmctld", "slurmd", "munged")):
        return None
    if os.environ.get(INSTALL_SWITCH) != "1":
        return (
            f"Slurm is not installed: install {' '.join(PACKAGES)}, or set {INSTALL_SWITCH}=1 to let the "
            "tests apt-get install them"
        )
    if os.geteuid() != 0:
        return f"Slurm is not installed and {INSTALL_SWITCH}=1 needs root to apt-get install it"
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    if proc.returncode != 0:
        update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=600)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"apt-get install {' '.join(PACKAGES)} failed:\n{update.stderr[-1000:]}\n{proc.stderr[-2000:]}"
            )
    return None


class Cluster:
    """munged + slurmctld + slurmd x 2, configured under ``root``."""

    def __init__(self, root: Path, cpus_per_node: int = 1):
        self.root, self.pids = root, []
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        host = socket.gethostname()
        for d in ("state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""ClusterName=litespark-ci
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credential lifetime; it is also how long a requeued job waits before it may start again (default
# 120 s), so that no node still holds the revoked credential of its previous run.
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=node[1-2] NodeHostname={host} NodeAddr=127.0.0.1 Port=17001-17002 CPUs={cpus_per_node} RealMemory=8000 State=UNKNOWN
PartitionName=ci Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
""")

    def _start(self, cmd: list[str], pidfile: Path) -> None:
        subprocess.run(cmd, check=True, env=self.env, capture_output=True, timeout=60)
        for _ in range(100):
            if pidfile.is_file() and pidfile.read_text().strip():
                self.pids.append(int(pidfile.read_text().split()[0]))
                return
            time.sleep(0.1)
        raise RuntimeError(f"{cmd[0]} wrote no pid file; log:\n{self.logs()}")

    def start(self) -> Cluster:
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged running yet
            self._start(
                [
                    "munged",
                    "--force",
                    f"--pid-file={self.root}/munged.pid",
                    f"--log-file={self.root}/log/munged.log",
                    f"--seed-file={self.root}/munged.seed",
                ],
                self.root / "munged.pid",
            )
        self._start(["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
        for name in ("node1", "node2"):
            self._start(["slurmd", "-f", str(self.conf), "-N", name], self.root / f"slurmd-{name}.pid")
        for _ in range(150):
            out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=self.env, capture_output=True, text=True).stdout
            if out.split() == ["idle", "2"]:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"nodes did not become idle: {out!r}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 15
        for pid in self.pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids = []

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        env = dict(self.env, **kwargs.pop("env", {}))
        return subprocess.run(list(cmd), env=env, capture_output=True, text=True, **kwargs)

    def job_state(self, job: str) -> dict:
        out = self.run("scontrol", "show", "job", job, "-o").stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
