"""Backbones by name: ``smollm2`` instead of the cache folder it is converted into.

A name is resolved to its folder (converted on first use, emshield.model.smollm2); anything else
is a path. A folder that happens to be called like a name is reached as ``./smollm2``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _smollm2(progress: bool) -> Path:
    from emshield.model.smollm2 import ensure_smollm2

    return ensure_smollm2(progress=progress)


NAMED: dict[str, Callable[[bool], Path]] = {"smollm2": _smollm2}


def is_backbone_name(value: str | Path) -> bool:
    return isinstance(value, str) and value in NAMED


def resolve_backbone(value: str | Path, *, progress: bool = False) -> Path:
    """The folder of the backbone ``value`` names, or ``value`` itself as a path."""
    if is_backbone_name(value):
        return NAMED[str(value)](progress)
    return Path(value)
