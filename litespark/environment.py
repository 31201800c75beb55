"""What this host can run, and what a run or benchmark ran on: package versions, GPU, driver, git
revision, source digest.

Recorded next to every result so that a number can be traced to the software that produced it.  The
git revision is only as good as the checkout's git metadata (a copy shipped to a GPU host may carry
an older ``.git``); the source digest is computed from the code files themselves, so a result can be
matched to a commit by running ``python -m litespark.environment`` on a checkout of it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import platform
import subprocess
from pathlib import Path

SOURCE_DIRS = ("litespark", "megatron_patches", "deepspeed_patches", "data_prep")
"""The directories whose Python files make up the code a result depends on."""


@functools.cache
def te_available() -> bool:
    """True when Transformer Engine's PyTorch API imports and a CUDA device is visible."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def _version(module: str) -> str | None:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:
        return None
    return getattr(mod, "__version__", "?")


def git_revision() -> str | None:
    """HEAD of the checkout this package was imported from, with ``-dirty`` when tracked files differ
    from it (the figures then come from uncommitted code), or None outside git."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=here,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = head.stdout.strip()
    if not rev:
        return None
    return f"{rev}-dirty" if status.returncode == 0 and status.stdout.strip() else rev


def source_digest(root: Path | None = None) -> str | None:
    """sha256 over the path and content of every ``*.py`` file under :data:`SOURCE_DIRS` of ``root``
    (default: the checkout this package was imported from), in sorted order; None if none is found."""
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    files = sorted(p for d in SOURCE_DIRS for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def collect_versions() -> dict:
    """Python, torch, Megatron-Core, DeepSpeed, TE and transformers versions, host, GPU, driver, git."""
    import torch

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
    }
    for key, module in (
        ("megatron_core", "megatron.core"),
        ("deepspeed", "deepspeed"),
        ("transformer_engine", "transformer_engine"),
        ("transformers", "transformers"),
    ):
        version = _version(module)
        if version is not None:
            out[key] = version
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            pass
    out["git_revision"] = git_revision()
    out["source_digest"] = source_digest()
    return out


if __name__ == "__main__":
    print(json.dumps({"git_revision": git_revision(), "source_digest": source_digest()}, indent=1))
