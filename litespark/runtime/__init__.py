"""How the model runs on many processes: the process groups, DeepSpeed's engine and its config, and
what Litespark adds to the engine (fp32 gradients written by Transformer Engine, the layers replayed
as CUDA graphs)."""
