"""Rebinding a module-level function in the DeepSpeed modules that call it, and undoing that."""

from __future__ import annotations

import importlib

_ORIGINAL = "_litespark_original"


def rebind(name: str, replacement, modules: tuple[str, ...]) -> None:
    """Bind ``name`` to ``replacement`` in each of ``modules`` (idempotent), remembering the original."""
    for module_name in modules:
        module = importlib.import_module(module_name)
        current = getattr(module, name)
        if current is replacement:
            continue
        setattr(replacement, _ORIGINAL, current)
        setattr(module, name, replacement)


def restore(name: str, replacement, modules: tuple[str, ...]) -> None:
    """Undo :func:`rebind` where it was done."""
    original = getattr(replacement, _ORIGINAL, None)
    for module_name in modules:
        module = importlib.import_module(module_name)
        if getattr(module, name) is replacement and original is not None:
            setattr(module, name, original)


def original(replacement):
    """The function ``replacement`` stands in for (after :func:`rebind`), else None."""
    return getattr(replacement, _ORIGINAL, None)
