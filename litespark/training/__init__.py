"""The training job: the loop and its step, the data order, checkpoints, metrics and energy."""
