"""Benchmark: Litespark against the Hugging Face and Megatron-Core + DeepSpeed stacks (``python -m litespark.bench``)."""
