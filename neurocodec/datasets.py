"""The user guide's import path: `from neurocodec.datasets import X` gives the same objects."""

from __future__ import annotations

from typing import Any

import neurocodec


def __getattr__(name: str) -> Any:
    return getattr(neurocodec, name)


def __dir__() -> list[str]:
    return neurocodec.__all__
