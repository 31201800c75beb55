"""Conversions between Litespark (Megatron-Core) checkpoints and other formats."""
