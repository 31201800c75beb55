"""How Litespark's patches change third-party code: a version guard, and rebinding a module-level name.

The patches themselves live in ``megatron_patches/`` and ``deepspeed_patches/`` (one per file, each
with ``apply()``, ``remove()`` where it can be undone, a ``TARGET`` and the releases it was checked
on).  Two things are shared by all of them:

* :func:`require_tested_version`: a patch refuses a release of its library it was not checked
  against, because its target may have moved or been fixed, so a silent patch would be wrong
  either way.
* :func:`rebind` / :func:`restore`: Megatron's ``Attention.forward`` and DeepSpeed's optimizer step
  call some functions through names their modules imported; replacing such a function means
  rebinding the name in each of those modules.  The original is remembered on the replacement (one
  original per replacement: every module imported the same function), including the case where a
  module had no such name (TE's optional import).
"""

from __future__ import annotations

import importlib

_ORIGINAL = "_litespark_original"
_ABSENT = object()
"""Stands for "the module had no such name" (restored by deleting it)."""


class PatchError(RuntimeError):
    """A patch cannot be applied safely to the installed library."""


def require_tested_version(package: str, patch: str, tested: tuple[str, ...], hint: str = "") -> None:
    """Raise :class:`PatchError` unless the installed ``package`` (an importable name with
    ``__version__``) is one of the releases ``patch`` (a dotted module name) was checked on."""
    found = importlib.import_module(package).__version__
    if found not in tested:
        pin = {"megatron.core": "megatron-core"}.get(package, package)
        raise PatchError(
            f"{patch} was checked against {pin} {', '.join(tested)}, found {found}: "
            f"pin {pin}=={tested[-1]}{hint} or re-check the patch target and extend its TESTED list"
        )


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
