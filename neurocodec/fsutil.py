"""Atomic file writes (a temp file beside the target, fsync, then rename) and capped reads of small files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from neurocodec.errors import DatasetError

TEMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    """A hidden temp name beside `final`, unique to this process."""
    return final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(final: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `final` so that readers see either nothing or all of it."""
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            _flush(f, fsync)

    _replace_atomically(final, fill)


def is_temp_name(name: str) -> bool:
    """True for temp files this module creates (left behind only by a killed process)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_link_or_copy(source: Path, final: Path, *, fsync: bool = True) -> None:
    """Make `final` a file with the bytes of `source`, atomically (replacing what `final` was):
    a hard link where the filesystem has them, else a copy (fsynced), renamed into place."""
    def fill(tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except OSError:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                _flush(dst, fsync)

    _replace_atomically(final, fill)


def _replace_atomically(final: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` make a temp file beside `final`, then rename it into place; on any failure
    the temp file is removed and `final` is untouched."""
    tmp = temp_path(final)
    tmp.unlink(missing_ok=True)
    try:
        fill(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _flush(f: Any, fsync: bool) -> None:
    if fsync:
        f.flush()
        os.fsync(f.fileno())


def read_capped(target: Path, max_bytes: int, missing: str, what: str) -> bytes:
    """The bytes of the small file `target` (a split, statistics...), refused by its size before
    it is read: DatasetError "`target`: `missing`" when it does not exist, and one naming `what`
    the file is when it holds more than `max_bytes`."""
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{target}: {missing}") from None
    if size > max_bytes:
        raise DatasetError(f"{target}: {size} bytes, more than {what} may hold ({max_bytes})")
    return target.read_bytes()
