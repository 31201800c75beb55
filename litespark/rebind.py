"""Rebinding a module-level name in the modules that look it up, and undoing that.

Megatron's ``Attention.forward`` and DeepSpeed's optimizer step call some functions through names
their modules imported; replacing such a function means rebinding the name in each of those modules.
Both :mod:`megatron_patches.qkv_rope` and :mod:`litespark.deepspeed_patches` do it through here.  The
original is remembered on the replacement (one original per replacement: every module imported the
same function), including the case where a module had no such name (TE's optional import).
"""

from __future__ import annotations

import importlib

_ORIGINAL = "_litespark_original"
_ABSENT = object()
"""Stands for "the module had no such name" (restored by deleting it)."""


def rebind(name: str, replacement, modules: tuple[str, ...]) -> None:
    """Bind ``name`` to ``replacement`` in each of ``modules`` (idempotent), remembering the original."""
    for module_name in modules:
        module = importlib.import_module(module_name)
        current = getattr(module, name, _ABSENT)
        if current is replacement:
            continue
        setattr(replacement, _ORIGINAL, current)
        setattr(module, name, replacement)


def restore(name: str, replacement, modules: tuple[str, ...]) -> None:
    """Undo :func:`rebind` where it was done."""
    original = getattr(replacement, _ORIGINAL, None)
    if original is None:
        return
    for module_name in modules:
        module = importlib.import_module(module_name)
        if getattr(module, name, _ABSENT) is not replacement:
            continue
        if original is _ABSENT:
            delattr(module, name)
        else:
            setattr(module, name, original)


def original(replacement):
    """The function ``replacement`` stands in for (after :func:`rebind`), else None."""
    found = getattr(replacement, _ORIGINAL, None)
    return None if found is _ABSENT else found


def is_bound(name: str, replacement, module_name: str) -> bool:
    """Whether ``module_name``'s ``name`` is ``replacement`` now."""
    return getattr(importlib.import_module(module_name), name, None) is replacement
