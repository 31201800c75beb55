"""ds_configs/*.json are generated, never hand-edited: they must equal what the code derives."""

from __future__ import annotations

import importlib.util
import json

from tests.helpers.processes import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("ds_generate", ROOT / "ds_configs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshots_match_the_code():
    gen = _generator()
    for stage in (1, 2, 3):
        path = ROOT / "ds_configs" / f"zero{stage}.json"
        assert path.read_text() == gen.render(stage), f"{path.name} is stale: run python ds_configs/generate.py"
        assert json.loads(path.read_text())["zero_optimization"]["stage"] == stage


def test_check_mode_detects_drift(tmp_path, monkeypatch):
    gen = _generator()
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main([]) == 0  # writes into tmp_path
    assert gen.main(["--check"]) == 0
    (tmp_path / "zero2.json").write_text("{}\n")
    assert gen.main(["--check"]) == 1
