"""What a result records about the code that produced it (litespark.environment)."""

from __future__ import annotations

import subprocess


def test_git_revision_says_when_the_tree_is_dirty(tmp_path, monkeypatch):
    """A benchmark run from uncommitted code must not be recorded under the clean commit's name."""

    from litespark import environment

    pkg = tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text("x = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
        subprocess.run(git + args, cwd=pkg.parent, check=True)
    monkeypatch.setattr(environment, "__file__", str(pkg / "environment.py"))  # "imported from" the temp repo
    clean = environment.git_revision()
    assert clean and len(clean) == 40
    (pkg / "mod.py").write_text("x = 2\n")
    assert environment.git_revision() == clean + "-dirty"


def test_source_digest_follows_the_code_not_the_git_metadata(tmp_path):
    """Two copies of the same code have one digest wherever they live; any edit, added file or
    rename under the source directories changes it; files elsewhere do not."""
    from litespark import environment

    def tree(root, files):
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return environment.source_digest(root)

    files = {
        "litespark/a.py": "x = 1\n",
        "megatron_patches/b.py": "y = 2\n",
        "deepspeed_patches/c.py": "z = 3\n",
        "data_prep/d.py": "w = 4\n",
    }
    first = tree(tmp_path / "one", files)
    assert first and len(first) == 64 and tree(tmp_path / "two", files) == first
    assert tree(tmp_path / "three", {**files, "docs/notes.py": "ignored\n", "litespark/d.txt": "ignored"}) == first
    assert tree(tmp_path / "four", {**files, "litespark/a.py": "x = 2\n"}) != first
    assert tree(tmp_path / "five", {**files, "litespark/e.py": ""}) != first
    renamed = dict(files)
    renamed["litespark/a2.py"] = renamed.pop("litespark/a.py")
    assert tree(tmp_path / "six", renamed) != first
    assert environment.source_digest(tmp_path / "empty") is None
    assert environment.source_digest() is not None  # this checkout
