"""Shared version guard for the patches."""

from __future__ import annotations

import megatron.core


class PatchError(RuntimeError):
    """A patch cannot be applied safely to the installed megatron-core."""


def require_tested_version(patch: str, tested: tuple[str, ...]) -> None:
    """Raise :class:`PatchError` unless the installed megatron-core is one ``patch`` was checked on."""
    found = megatron.core.__version__
    if found not in tested:
        raise PatchError(
            f"megatron_patches.{patch} was checked against megatron-core {', '.join(tested)}, found {found}: "
            f"pin megatron-core=={tested[-1]} or re-check the patch target and extend its TESTED list")
