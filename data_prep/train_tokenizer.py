"""Train a Llama-style tokenizer: SentencePiece BPE as Llama 2's, or byte-level BPE as Llama 3's.

    python data_prep/train_tokenizer.py --input data/sample/train --vocab-size 512 --out data/tokenizer.model
    python data_prep/train_tokenizer.py --input data/sample/train --vocab-size 1000 --out data/llama3_tok \
        --format huggingface

SentencePiece: byte fallback, <unk>=0, <s>=1, </s>=2, no normalisation.  Hugging Face (a directory with
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``, as a Llama 3 checkpoint
ships them): Llama 3's pre-tokenizer regex and byte-level BPE with ``--vocab-size`` entries, then
``--special-tokens`` special tokens (Llama 3: 256, ``<|begin_of_text|>`` first, ``<|end_of_text|>`` the
EOS), BOS added by the post-processor.  For custom vocabularies and for the demo, tests and benchmarks
(the Llama tokenizers cannot be downloaded there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from data_prep.corpus import input_files, iter_texts

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_NAMED = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}


def llama3_special_tokens(count: int) -> list[str]:
    """Llama 3's special tokens in order: the named ones at their places, reserved ones between."""
    names, reserved = [], 0
    for i in range(count):
        if i in LLAMA3_NAMED:
            names.append(LLAMA3_NAMED[i])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def train_huggingface(texts, vocab_size: int, special_count: int, out: Path) -> int:
    """A Llama-3-style byte-level BPE in directory ``out``; returns its vocabulary size with specials."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    specials = llama3_special_tokens(special_count)
    tok.add_special_tokens(specials)
    bos, eos = specials[0], specials[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (tmp / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos}, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return tok.get_vocab_size(with_added_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="files, directories or globs of .jsonl[.gz|.zst]")
    parser.add_argument(
        "--out", required=True, help="output .model path (a .vocab is written beside it), or a directory"
    )
    parser.add_argument("--format", choices=("sentencepiece", "huggingface"), default="sentencepiece")
    parser.add_argument("--vocab-size", type=int, default=32000, help="pieces (huggingface: before the specials)")
    parser.add_argument("--special-tokens", type=int, default=256, help="huggingface: Llama 3 has 256")
    parser.add_argument("--max-sentences", type=int, default=2_000_000, help="lines sampled for training")
    parser.add_argument("--text-key", default="text")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.format == "sentencepiece" and out.suffix != ".model":
        print(f"train_tokenizer: error: --out {out} must end in .model", file=sys.stderr)
        return 2
    try:
        files = input_files(args.input)
    except FileNotFoundError as exc:
        print(f"train_tokenizer: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "huggingface":
        if args.special_tokens < 2:
            print("train_tokenizer: error: --special-tokens must be at least 2 (BOS and EOS)", file=sys.stderr)
            return 2
        texts = (text for path in files for text, _ in iter_texts(path, args.text_key))
        size = train_huggingface(texts, args.vocab_size, args.special_tokens, out)
        print(f"wrote {out}/tokenizer.json (vocabulary {size}, byte-level BPE, Llama 3 layout)")
        return 0
    import sentencepiece as spm

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        text_file = Path(tmp) / "text.txt"
        with open(text_file, "w", encoding="utf-8") as f:
            for path in files:
                for text, _ in iter_texts(path, args.text_key):
                    f.write(text.replace("\r", "") + "\n")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=args.vocab_size,
            byte_fallback=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            character_coverage=0.9995,
            input_sentence_size=args.max_sentences,
            shuffle_input_sentence=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            max_sentence_length=1 << 16,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        os.replace(f"{prefix}.model", out)
        os.replace(f"{prefix}.vocab", out.with_suffix(".vocab"))
    print(f"wrote {out} (vocabulary {args.vocab_size}, BPE, byte fallback, bos=1 eos=2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
