"""Helpers the tests share (no tests here): subprocess launchers, batch builders, CPU stand-ins for
Transformer Engine modules, the real-Slurm cluster and the multi-process workers."""
