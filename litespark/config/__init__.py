"""The typed configuration of a Litespark run, and what its automatic settings become.

``schema`` defines the fields, ``overrides`` builds a config from YAML / ``--set`` / dicts,
``validate`` checks that the fields agree, ``automatic`` holds the rules of the automatic choices and
``resolve`` decides them once into a frozen :class:`RunPlan`, ``presets`` holds the named starting
points and ``cli`` the shared command-line plumbing.  The names most code
needs are importable from here.
"""

from litespark.config.overrides import apply_overrides, from_dict, load_yaml, to_dict
from litespark.config.resolve import RunPlan, plan_for, resolve
from litespark.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DPOConfig,
    KernelConfig,
    LitesparkConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    RunConfig,
    SFTConfig,
)
from litespark.config.validate import validate

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DPOConfig",
    "DataConfig",
    "KernelConfig",
    "LitesparkConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "RunConfig",
    "RunPlan",
    "SFTConfig",
    "apply_overrides",
    "from_dict",
    "load_yaml",
    "plan_for",
    "resolve",
    "to_dict",
    "validate",
]
