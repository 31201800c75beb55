"""``python -m litespark.convert`` on CPU: Litespark (TP=2, ZeRO-2) -> Hugging Face with logits parity,
HF -> Litespark -> HF bit-exact, TP=1 and TP=2 imports agree, the export generates and fine-tunes
with the standard ``transformers`` Trainer, and every documented mistake is a one-line exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litespark.config import to_dict
from tests.helpers.processes import ROOT, run_training, torchrun, train_cmd, train_env

# name -> (--set overrides of the tiny preset, training processes)
SHAPES = {
    "gqa": (["model.num_query_groups=2"], 4),  # TP=2 x DP=2: ZeRO-2 partitions over two ranks
    "odd-theta": (
        [
            "model.hidden_size=96",
            "model.num_attention_heads=6",
            "model.num_query_groups=2",
            "model.ffn_hidden_size=200",
            "model.vocab_size=500",
            "model.rotary_base=500000",
        ],
        2,
    ),
    "mha-tied": (
        ["model.num_query_groups=4", "model.ffn_hidden_size=160", "model.vocab_size=384", "model.tie_embeddings=true"],
        2,
    ),
}


def _convert(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "litespark.convert", *args],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}:\n{proc.stderr[-3000:]}"
    return proc


def _tokens(vocab: int, seed: int, batch: int = 3, seq: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _litespark_logits(checkpoint: Path, tp: int, tokens: torch.Tensor, tmp: Path) -> torch.Tensor:
    """Litespark's forward of ``tokens`` with ``checkpoint`` loaded through the trainer's path."""
    from litespark.convert.litespark_checkpoint import read_checkpoint, resolve_checkpoint

    cfg, _ = read_checkpoint(resolve_checkpoint(checkpoint))
    cfg.data.micro_batch_size = tokens.shape[0]
    (tmp / "cfg.json").write_text(json.dumps(to_dict(cfg)))
    torch.save(tokens, tmp / "tokens.pt")
    out = tmp / f"logits_tp{tp}.pt"
    torchrun(
        "tests/helpers/workers/logits_worker.py",
        tp,
        "--checkpoint",
        str(checkpoint),
        "--config-json",
        str(tmp / "cfg.json"),
        "--tokens",
        str(tmp / "tokens.pt"),
        "--out",
        str(out),
    )
    return torch.load(out)


def _hf_logits(hf_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (run dir, exported HF dir) for each shape, trained 3 steps with TP=2 and ZeRO-2."""
    out = {}
    for name, (sets, nproc) in SHAPES.items():
        run = tmp_path_factory.mktemp(f"run-{name}")
        run_training(
            run,
            *sets,
            "parallel.tensor_parallel=2",
            "parallel.zero_stage=2",
            "run.train_iters=3",
            "run.log_interval=1",
            nproc=nproc,
        )
        hf = run.parent / f"hf-{name}"
        _convert("to-hf", "--checkpoint", str(run), "--out", str(hf))
        out[name] = (run, hf)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_export_logits_equal_litespark(trained, name, tmp_path):
    run, hf = trained[name]
    from litespark.convert.litespark_checkpoint import read_checkpoint, resolve_checkpoint

    vocab = read_checkpoint(resolve_checkpoint(run))[0].model.vocab_size
    config = json.loads((hf / "config.json").read_text())
    assert config["vocab_size"] == vocab and config["architectures"] == ["LlamaForCausalLM"]
    for seed in (1, 2):
        tokens = _tokens(vocab, seed)
        ours = _litespark_logits(run, 2, tokens, tmp_path)
        theirs = _hf_logits(hf, tokens)
        assert theirs.shape == ours.shape
        assert _rel(theirs, ours) < 1e-4, f"{name}: HF vs Litespark relative logit difference {_rel(theirs, ours):.2e}"


@pytest.mark.slow
def test_shards_and_index(trained, tmp_path):
    from safetensors.torch import load_file

    run, hf = trained["odd-theta"]
    sharded = tmp_path / "sharded"
    _convert(
        "to-hf",
        "--checkpoint",
        str(run / "checkpoints" / "latest"),
        "--out",
        str(sharded),
        "--max-shard-bytes",
        "200000",
    )
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    one = load_file(hf / "model.safetensors")
    many = {k: v for f in files for k, v in load_file(sharded / f).items()}
    assert set(one) == set(many) and all(torch.equal(one[k], many[k]) for k in one)
    assert _rel(_hf_logits(sharded, _tokens(500, 3)), _hf_logits(hf, _tokens(500, 3))) == 0.0


def _save_hf(path: Path, dtype=torch.float32, **overrides) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    kwargs = {
        "vocab_size": 500,
        "hidden_size": 96,
        "intermediate_size": 200,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "rope_theta": 5e5,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).to(dtype)
    with torch.no_grad():  # HF initialises norms to 1: perturb them so that a lost norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_round_trip_is_bit_exact(tmp_path, dtype):
    from safetensors.torch import load_file

    _save_hf(tmp_path / "hf", dtype)
    _convert("from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ls"), "--tp", "2")
    _convert("to-hf", "--checkpoint", str(tmp_path / "ls"), "--out", str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == dtype and torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_tp1_and_tp2_imports_give_hf_logits(tmp_path):
    _save_hf(tmp_path / "hf")
    tokens = _tokens(500, 5)
    reference = _hf_logits(tmp_path / "hf", tokens)
    results = {}
    for tp in (1, 2):
        _convert("from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / f"ls{tp}"), "--tp", str(tp))
        results[tp] = _litespark_logits(tmp_path / f"ls{tp}", tp, tokens, tmp_path)
        assert _rel(results[tp], reference) < 1e-4, f"TP={tp}: {_rel(results[tp], reference):.2e}"
    assert _rel(results[2], results[1]) < 1e-5


@pytest.mark.slow
def test_export_generates_and_finetunes_with_trainer(trained, tmp_path):
    pytest.importorskip("accelerate")
    from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainingArguments

    run, _ = trained["gqa"]  # vocab 512: the size the tokenizer below is trained with
    subprocess.run(
        [sys.executable, "data_prep/make_sample.py", "--out", str(tmp_path / "sample"), "--max-mb", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "data_prep/train_tokenizer.py",
            "--input",
            str(tmp_path / "sample" / "train"),
            "--vocab-size",
            "512",
            "--out",
            str(tmp_path / "tok.model"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    hf = tmp_path / "hf"
    _convert("to-hf", "--checkpoint", str(run), "--out", str(hf), "--tokenizer", str(tmp_path / "tok.model"))
    tok = AutoTokenizer.from_pretrained(hf)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    text = "def main(argv):\n    return 0"
    assert tok(text).input_ids == [sp.bos_id(), *sp.encode(text)]
    model = LlamaForCausalLM.from_pretrained(hf).float()
    prompt = tok("import os", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    assert generated.shape[1] > prompt.input_ids.shape[1]
    assert isinstance(tok.decode(generated[0]), str)

    ids = torch.tensor(sp.encode(text * 40)[: 64 * 8]).view(8, 64)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    args = TrainingArguments(
        output_dir=str(tmp_path / "ft"),
        per_device_train_batch_size=4,
        max_steps=12,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows())
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_one_line_errors(trained, tmp_path):
    run, _ = trained["odd-theta"]  # vocab 500
    import shutil

    # tokenizer whose vocabulary does not match the embedding
    subprocess.run(
        [sys.executable, "data_prep/make_sample.py", "--out", str(tmp_path / "s"), "--max-mb", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "data_prep/train_tokenizer.py",
            "--input",
            str(tmp_path / "s" / "train"),
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "tok.model"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    err = _convert(
        "to-hf",
        "--checkpoint",
        str(run),
        "--out",
        str(tmp_path / "x"),
        "--tokenizer",
        str(tmp_path / "tok.model"),
        expect=2,
    ).stderr
    assert "vocabulary of 400 does not match the model's embedding (500 rows)" in err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.incomplete-*"))
    # a TP shard missing from the checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(run / "checkpoints", broken / "checkpoints")
    step = broken / "checkpoints" / (broken / "checkpoints" / "latest").read_text().strip()
    (step / "mp_rank_01_model_states.pt").unlink()
    err = _convert("to-hf", "--checkpoint", str(broken), "--out", str(tmp_path / "y"), expect=2).stderr
    assert "mp_rank_01_model_states.pt is missing" in err and len(err.strip().splitlines()) == 1
    # a missing safetensors shard of an HF checkpoint
    _convert("to-hf", "--checkpoint", str(run), "--out", str(tmp_path / "sh"), "--max-shard-bytes", "200000")
    (
        tmp_path
        / "sh"
        / "model-00002-of-{:05d}.safetensors".format(
            len(set(json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())["weight_map"].values()))
        )
    ).unlink()
    err = _convert("from-hf", "--hf", str(tmp_path / "sh"), "--out", str(tmp_path / "z"), expect=2).stderr
    assert "shard model-00002-of-" in err and "is missing" in err
    # a model Litespark's Llama does not implement
    _save_hf(tmp_path / "scaled", rope_scaling={"rope_type": "linear", "factor": 2.0})
    err = _convert("from-hf", "--hf", str(tmp_path / "scaled"), "--out", str(tmp_path / "w"), expect=2).stderr
    assert "RoPE scaling" in err
    # an imported checkpoint loaded by a run of another shape
    _save_hf(tmp_path / "small")
    _convert("from-hf", "--hf", str(tmp_path / "small"), "--out", str(tmp_path / "imported"))
    proc = run_training(tmp_path / "other", f"checkpoint.load={tmp_path / 'imported'}", "run.train_iters=1", expect=2)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "checkpoint.load:" in errors[0] and "holds another model" in errors[0], proc.stderr
    assert not (tmp_path / "other" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_imported_weights_load_only_into_a_model_that_computes_the_same_function(tmp_path):
    """Same shape is not enough: another RoPE base or norm epsilon would run the imported weights as
    another function.  The import's hint names a config file that exists and makes the run fit."""
    _save_hf(tmp_path / "hf", max_position_embeddings=64)  # rope_theta 5e5, rms_norm_eps 1e-5
    proc = _convert("from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ls"))
    hint = next(line for line in proc.stderr.splitlines() if "train from it with:" in line)
    config = Path(hint.split("--config ")[1].split()[0])
    assert config.is_file() and f"--set checkpoint.load={tmp_path / 'ls'}" in hint
    shape = [
        "model.hidden_size=96",
        "model.num_attention_heads=6",
        "model.num_query_groups=2",
        "model.ffn_hidden_size=200",
        "model.vocab_size=500",
    ]
    for sets, message in (
        (shape, "model.rotary_base is 500000.0 there and 10000.0 in this run"),
        (
            [*shape, "model.rotary_base=500000", "model.norm_epsilon=1e-6"],
            "model.norm_epsilon is 1e-05 there and 1e-06 in this run",
        ),
    ):
        proc = run_training(
            tmp_path / "run", *sets, f"checkpoint.load={tmp_path / 'ls'}", "run.train_iters=1", expect=2
        )
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], proc.stderr
    cmd = train_cmd(
        1,
        "--preset",
        "tiny",
        "--config",
        str(config),
        "--set",
        f"checkpoint.load={tmp_path / 'ls'}",
        "--run-dir",
        str(tmp_path / "fits"),
        "--train-iters",
        "2",
    )
    fits = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
    assert fits.returncode == 0 and "initialised weights from" in fits.stderr, fits.stderr[-3000:]


@pytest.mark.slow
def test_pretraining_continues_from_imported_weights(tmp_path):
    """from-hf -> train with checkpoint.load: the run starts from the imported weights (its first loss
    differs from a fresh run's on the same data) and trains."""
    _save_hf(tmp_path / "hf", max_position_embeddings=64)
    _convert("from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ls"))
    shape = [
        "model.hidden_size=96",
        "model.num_attention_heads=6",
        "model.num_query_groups=2",
        "model.ffn_hidden_size=200",
        "model.vocab_size=500",
        "model.rotary_base=500000",
    ]
    from tests.helpers.processes import read_metrics

    run_training(
        tmp_path / "cont", *shape, f"checkpoint.load={tmp_path / 'ls'}", "run.train_iters=4", "run.log_interval=1"
    )
    run_training(tmp_path / "fresh", *shape, "run.train_iters=4", "run.log_interval=1")
    cont, fresh = read_metrics(tmp_path / "cont"), read_metrics(tmp_path / "fresh")
    # Random HF weights and Megatron's own initialisation give different first losses on the same
    # data; equal first losses would mean the checkpoint was not loaded.
    assert abs(cont[0]["loss"] - fresh[0]["loss"]) > 1e-3
    assert len(cont) == 4 and all(r["loss"] == r["loss"] for r in cont)


def test_shape_mismatch_names_the_first_problem():
    from litespark.training.checkpoint_files import shape_mismatch

    needed = {"a": (2, 3), "b": (4,)}
    assert shape_mismatch({"a": (2, 3), "b": (4,)}, needed) is None
    assert shape_mismatch({"a": (2, 3)}, needed) == "tensor b is missing"
    assert shape_mismatch({"a": (3, 2), "b": (4,)}, needed) == "a has shape (3, 2), this run's model needs (2, 3)"
    assert shape_mismatch({"a": (2, 3), "b": (4,), "c": (1,)}, needed) == "unexpected tensor c"


@pytest.mark.slow
@pytest.mark.parametrize("fp32_grads", [False, True])
def test_fp32_master_weights_of_split_optimizer_groups(tmp_path, fp32_grads):
    """BF16 training with the weight matrices in many ZeRO groups (parallel.zero_sub_group_size), with
    DeepSpeed's ZeRO-1 optimizer or its BF16_Optimizer (precision.fp32_grad_accumulation): DeepSpeed's
    consolidation, which ``to-hf --dtype fp32`` uses, finds every tensor, and each fp32 master rounds
    to the bf16 weight the checkpoint stores."""
    from litespark.convert.litespark_checkpoint import fp32_master_weights, read_checkpoint, resolve_checkpoint

    run_training(
        tmp_path,
        "data.source=mock",
        "run.train_iters=2",
        "checkpoint.save_interval=2",
        "precision.bf16=true",
        "parallel.zero_sub_group_size=20000",
        f"precision.fp32_grad_accumulation={str(fp32_grads).lower()}",
    )
    step = resolve_checkpoint(tmp_path)
    manifest = json.loads((step / "litespark.json").read_text())
    assert manifest["optimizer_param_groups"] > 4
    assert manifest["optimizer"] == ("BF16_Optimizer" if fp32_grads else "DeepSpeedZeroOptimizer")
    _, (stored,) = read_checkpoint(step)
    masters = fp32_master_weights(step)
    assert masters.keys() == stored.keys()
    for name, weight in stored.items():
        assert weight.dtype == torch.bfloat16 and masters[name].dtype == torch.float32
        assert torch.equal(masters[name].to(torch.bfloat16), weight), name


def _llama3_rope(factor: float, **changed) -> dict:
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 5e5,
        **changed,
    }


def _as_transformers_4_config(hf_dir: Path) -> None:
    """Rewrite ``config.json`` as transformers 4 wrote it: ``rope_theta`` and ``rope_scaling``."""
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    path.write_text(json.dumps(config))


@pytest.mark.slow
@pytest.mark.parametrize("factor, written_by", [(8.0, "transformers 5"), (32.0, "transformers 4")])
def test_llama3_rope_scaling_gives_hf_logits_and_round_trips(tmp_path, factor, written_by):
    """Llama 3.1/3.3 (factor 8) and 3.2 (factor 32) RoPE: the import computes HF's logits, the export
    carries the scaling back (in both the transformers 5 and 4 keys) with the weights bit-exact."""
    from safetensors.torch import load_file

    # Larger weights than HF's default initialisation, so that positions (and their scaling) show in the logits.
    shape = {"initializer_range": 0.1, "max_position_embeddings": 131072}
    _save_hf(tmp_path / "hf", rope_parameters=_llama3_rope(factor), **shape)
    _save_hf(tmp_path / "plain", rope_parameters={"rope_type": "default", "rope_theta": 5e5}, **shape)
    if written_by == "transformers 4":
        _as_transformers_4_config(tmp_path / "hf")
    tokens = _tokens(500, 5, batch=2, seq=256)
    reference = _hf_logits(tmp_path / "hf", tokens)
    assert _rel(_hf_logits(tmp_path / "plain", tokens), reference) > 1e-3  # the scaling is visible at this tolerance

    _convert("from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ls"), "--tp", "1")
    ours = _litespark_logits(tmp_path / "ls", 1, tokens, tmp_path)
    assert _rel(ours, reference) < 1e-5, f"factor {factor}: {_rel(ours, reference):.2e}"

    _convert("to-hf", "--checkpoint", str(tmp_path / "ls"), "--out", str(tmp_path / "back"))
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["rope_parameters"] == _llama3_rope(factor)
    assert config["rope_scaling"] == {k: v for k, v in _llama3_rope(factor).items() if k != "rope_theta"}
    assert config["rope_theta"] == 5e5
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert _rel(_hf_logits(tmp_path / "back", tokens), reference) == 0.0


@pytest.mark.parametrize(
    "rope, message",
    [
        ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "RoPE scaling of type 'yarn' is not supported"),
        ({"type": "linear", "factor": 2.0}, "RoPE scaling of type 'linear' is not supported"),
        (_llama3_rope(8.0, high_freq_factor=2.0), "high_freq_factor=2.0 is not supported"),
        (_llama3_rope(8.0, original_max_position_embeddings=4096), "original_max_position_embeddings=4096"),
        (_llama3_rope(0.0), "llama3 RoPE scaling needs a positive 'factor', got 0.0"),
        (_llama3_rope(8.0, high_freq_factor="x"), "high_freq_factor=x is not supported"),
        # transformers takes a missing original_max_position_embeddings as max_position_embeddings (none here)
        ({k: v for k, v in _llama3_rope(8.0).items() if k != "original_max_position_embeddings"}, "=None"),
    ],
)
def test_rope_scaling_that_megatron_cannot_represent_is_refused_in_one_line(tmp_path, rope, message):
    from litespark.config import ConfigError
    from litespark.convert.hf_files import model_config_from_hf

    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 256,
        "rope_parameters": rope,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message) as error:
        model_config_from_hf(tmp_path, None)
    assert "\n" not in str(error.value)
    config["rope_parameters"] = _llama3_rope(32.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_config_from_hf(tmp_path, None).rope_scaling_factor == 32.0
    # Given both keys, transformers 5 takes rope_scaling; a missing original context is max_position_embeddings.
    legacy = {k: v for k, v in _llama3_rope(8.0).items() if k not in ("rope_theta", "original_max_position_embeddings")}
    config.update(rope_scaling=legacy, rope_theta=5e5, max_position_embeddings=8192)
    (tmp_path / "config.json").write_text(json.dumps(config))
    m = model_config_from_hf(tmp_path, None)
    assert (m.rope_scaling_factor, m.rotary_base) == (8.0, 5e5)
