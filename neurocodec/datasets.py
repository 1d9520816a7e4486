"""The user guide's import path: `from neurocodec.datasets import X` gives the same objects as
`from neurocodec import X`, for every public name, imported as lazily."""

from __future__ import annotations

from typing import Any

import neurocodec

__all__ = list(neurocodec.__all__)


def __getattr__(name: str) -> Any:
    """Forward to `neurocodec` (PEP 562); an unknown name is an AttributeError naming this module."""
    if name not in __all__:
        raise AttributeError(f"module 'neurocodec.datasets' has no attribute {name!r}")
    return getattr(neurocodec, name)


def __dir__() -> list[str]:
    """The public names, the same as `dir(neurocodec)`."""
    return list(__all__)
