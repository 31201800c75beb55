"""The user docs point at things that exist: every repository path they name, and every module they
run with ``python -m``.  (CHANGELOG.md is history and may name what was removed.)"""

from __future__ import annotations

import importlib.util
import itertools
import re

import pytest

from tests.helpers.processes import ROOT

PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "benchmarks" / "results" / "README.md",
        ROOT / "ds_configs" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
TOP = (
    "litespark",
    "tests",
    "data_prep",
    "slurm",
    "benchmarks",
    "ds_configs",
    "megatron_patches",
    "deepspeed_patches",
    "docs",
    "requirements",
)
PATH = re.compile(r"(?<![\w./{,<-])((?:" + "|".join(TOP) + r")/[\w./{},*-]*)")
DOTTED = re.compile(r"(?<![\w./-])((?:litespark|megatron_patches|deepspeed_patches|data_prep)(?:\.\w+)+)")
MODULE = re.compile(r"python3? -m ((?:litespark|data_prep)[\w.]*)")
FILE_SUFFIXES = {"json", "jsonl", "yaml", "md", "py", "txt", "log", "png", "pt", "lock"}


def _expand(path: str) -> list[str]:
    """``a_{x,y}.md`` -> ``a_x.md``, ``a_y.md`` (several brace groups multiply)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _paths(text: str) -> set[str]:
    """Repository paths a page names; placeholders (NAME, OUT, YYYYMMDD) are not paths."""
    found = set()
    for m in PATH.finditer(text):
        if text[m.end() : m.end() + 1] == "<":  # a pattern such as bench_<preset>_<gpu>
            continue
        path = m.group(1).rstrip(".,:;)/")
        if any(re.fullmatch(r"[A-Z_]+|.*YYYY.*", part) for part in path.split("/")):
            continue
        found.update(_expand(path))
    return found


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest module prefix of ``dotted``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        if i == len(parts):
            return True  # a module; not imported (some need a GPU to import)
        obj = importlib.import_module(name)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page):
    missing = []
    for path in sorted(_paths(page.read_text())):
        if "*" in path:
            if not list(ROOT.glob(path)):
                missing.append(path)
        elif not (ROOT / path).exists() and not list(ROOT.glob(path + ".*")):  # a result's stem names its .md/.json
            missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_a_page_runs_exists(page):
    missing = [m for m in sorted(set(MODULE.findall(page.read_text()))) if importlib.util.find_spec(m) is None]
    assert not missing, f"{page.relative_to(ROOT)} runs modules that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_name_a_page_gives_exists(page):
    names = {n.rstrip(".") for n in DOTTED.findall(page.read_text())}
    missing = [n for n in sorted(names) if n.rsplit(".", 1)[-1] not in FILE_SUFFIXES and not _resolves(n)]
    assert not missing, f"{page.relative_to(ROOT)} names Python objects that do not exist: {missing}"


def test_the_checker_sees_a_missing_path():
    assert _paths("see `litespark/nope.py` and benchmarks/results/a_{x,y}.md, not benchmarks/results/NAME") == {
        "litespark/nope.py",
        "benchmarks/results/a_x.md",
        "benchmarks/results/a_y.md",
    }
    assert _resolves("litespark.training.step.train_step") and not _resolves("litespark.training.step.nope")
    assert not _resolves("litespark.nope.train_step")
