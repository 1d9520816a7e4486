"""The errors of drawing samples (kept apart so that importing them loads nothing heavy)."""

from __future__ import annotations

from neurocodec.errors import NeurocodecError


class ShowError(NeurocodecError, ValueError):
    """The sample, window or field asked for does not exist (the message says what there is)."""


class MissingExtraError(NeurocodecError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""
