"""Supervised fine-tuning on the Litespark engine: conversations and prompt-completion pairs rendered
with the checkpoint's own tokenizer and chat template, trained on the response tokens only."""
