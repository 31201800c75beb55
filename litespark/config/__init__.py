"""The typed configuration of a Litespark run, and what its automatic settings become.

``schema`` defines the fields, ``overrides`` builds a config from YAML / ``--set`` / dicts,
``validate`` checks that the fields agree, ``automatic`` resolves the automatic choices, ``presets``
holds the named starting points and ``cli`` the shared command-line plumbing.  The names most code
needs are importable from here.
"""

from litespark.config.automatic import resolve_backend
from litespark.config.overrides import apply_overrides, from_dict, load_yaml, to_dict
from litespark.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    KernelConfig,
    LitesparkConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    RunConfig,
)
from litespark.config.validate import gradient_accumulation_steps, micro_batch_size, validate

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "KernelConfig",
    "LitesparkConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "RunConfig",
    "apply_overrides",
    "from_dict",
    "gradient_accumulation_steps",
    "load_yaml",
    "micro_batch_size",
    "resolve_backend",
    "to_dict",
    "validate",
]
