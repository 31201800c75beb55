"""Shared command-line plumbing: preset + YAML + ``--set`` into a config, and the
one-line-error / exit-code-2 contract for user mistakes."""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Callable

from litespark.config import ConfigError, LitesparkConfig, apply_overrides, load_yaml
from litespark.config.presets import PRESETS, get_preset

EXIT_USAGE = 2


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --config and --set, in that order of application."""
    parser.add_argument("--preset", default="tiny", help=f"starting point: {', '.join(PRESETS)} (default: tiny)")
    parser.add_argument("--config", metavar="YAML", help="YAML file of overrides, applied after the preset")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one field, e.g. --set optim.lr=3e-4 (repeatable, applied last)",
    )


def load_config(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> LitesparkConfig:
    """Build the config that ``args`` describe (each field parsed and type-checked; whether the fields
    agree is checked once, when it is resolved: :func:`litespark.config.resolve`)."""
    cfg = get_preset(args.preset)
    if args.config:
        load_yaml(cfg, args.config)
    apply_overrides(cfg, list(extra_overrides or []) + list(args.overrides))
    return cfg


def quiet_optional_dependency_warnings() -> None:
    """Megatron warns at import about Apex/TE being absent; on CPU hosts that is expected."""
    for pattern in (
        ".*Transformer Engine and Apex are not installed.*",
        ".*Apex is not installed.*",
        ".*full scope is deprecated.*",
        r".*barrier\(\): using the device under current context.*",
        r".*all_gather_into_tensor. is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def user_errors_exit_2(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for CLI entry points: a ConfigError becomes ``PROG: error: ...`` and exit code 2."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except ConfigError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                sys.exit(EXIT_USAGE)

        return wrapper

    return decorate
