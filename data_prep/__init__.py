"""Offline data preparation: sample corpus, tokenizer training, tokenisation to Megatron indexed datasets."""
