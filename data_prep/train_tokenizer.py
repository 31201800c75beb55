"""Train a Llama-style SentencePiece BPE tokenizer (byte fallback, <unk>=0, <s>=1, </s>=2).

    python data_prep/train_tokenizer.py --input data/sample/train --vocab-size 512 --out data/tokenizer.model

For custom vocabularies and for the demo and tests (the Llama-2 tokenizer cannot be downloaded there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

from data_prep.corpus import input_files, iter_texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="files, directories or globs of .jsonl[.gz|.zst]")
    parser.add_argument("--out", required=True, help="output .model path (a .vocab is written beside it)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--max-sentences", type=int, default=2_000_000, help="lines sampled for training")
    parser.add_argument("--text-key", default="text")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".model":
        print(f"train_tokenizer: error: --out {out} must end in .model", file=sys.stderr)
        return 2
    try:
        files = input_files(args.input)
    except FileNotFoundError as exc:
        print(f"train_tokenizer: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
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
