"""Reading shards written by the pipeline the user guide describes (pickled `.pyd` members).

Those shards store arrays as pickles, and unpickling runs code chosen by whoever wrote the
file. So reading a `.pyd` member is refused unless the caller opts in by name with
`allow_pickle=True`, for shards they trust. Everything else in such a shard (`.npy`, `.json`,
`.txt`) is decoded safely. `convert_legacy_shards` rewrites a legacy dataset into neurocodec's
format once, after which it is read without pickle.

The archives are walked with neurocodec's own strict tar parser, never `tarfile`; `.tar.gz`,
`.tar.bz2` and `.tar.xz` shards are decompressed as a stream, and every member is capped at
`max_member_bytes`.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from neurocodec import npy
from neurocodec.errors import NeurocodecError, ShardError
from neurocodec.format import tar

_OPENERS = {".tar": open, ".tar.gz": gzip.open, ".tgz": gzip.open, ".tar.bz2": bz2.open, ".tar.xz": lzma.open}
MAX_MEMBER_BYTES = 1 << 31


class PickleNotAllowedError(NeurocodecError):
    """A pickled member was met and `allow_pickle=True` was not given."""


def legacy_shards(shard_dir: str | os.PathLike) -> list[Path]:
    """The legacy shard files of a directory, sorted by name."""
    root = Path(shard_dir)
    found = [p for p in root.iterdir() if p.name.startswith("shard_") and any(p.name.endswith(e) for e in _OPENERS)]
    if not found:
        raise ShardError(f"{root} holds no shard_*.tar[.gz|.bz2|.xz] files")
    return sorted(found)


def _read_exact(f: BinaryIO, size: int, shard: str, what: str) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ShardError(f"truncated while reading {what}", shard=shard)
    return data


def _members(path: Path, max_member_bytes: int) -> Iterator[tuple[str, bytes]]:
    opener = next(o for e, o in sorted(_OPENERS.items(), key=lambda kv: -len(kv[0])) if path.name.endswith(e))
    shard = path.name
    try:
        with opener(path, "rb") as f:
            while True:
                block = _read_exact(f, tar.BLOCK, shard, "a header")
                if block == b"\0" * tar.BLOCK:
                    return
                try:
                    header = tar.parse_header(block)
                except tar.HeaderError as exc:
                    raise ShardError(f"unsupported or corrupt tar header: {exc}", shard=shard) from None
                if header.size > max_member_bytes:
                    raise ShardError(f"member of {header.size} bytes exceeds max_member_bytes",
                                     shard=shard, member=header.name)
                data = _read_exact(f, header.size, shard, header.name)
                _read_exact(f, tar.padding(header.size), shard, "padding")
                yield header.name, data
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise ShardError(f"cannot read: {exc}", shard=shard) from None


def _decode(name: str, ext: str, data: bytes, allow_pickle: bool, shard: str) -> Any:
    try:
        if ext in ("pyd", "pickle", "pkl"):
            if not allow_pickle:
                raise PickleNotAllowedError(
                    f"shard {shard}, member {name}: pickled data can run arbitrary code when read; "
                    "pass allow_pickle=True only for shards you trust"
                )
            return pickle.loads(data)  # explicit, named opt-in above
        if ext == "npy":
            return npy.decode(data).copy()
        if ext == "json":
            return json.loads(data.decode("utf8"))
        if ext in ("txt", "text"):
            return data.decode("utf8")
        return data
    except NeurocodecError:
        raise
    except Exception as exc:
        raise ShardError(f"cannot decode: {type(exc).__name__}: {exc}", shard=shard, member=name) from None


def iter_legacy_samples(shard_dir: str | os.PathLike, *, allow_pickle: bool = False,
                        max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """Yield the samples of a legacy dataset in shard order: field -> value, plus `__key__`.

    Members sharing a key (the name up to its first dot) form a sample; torch tensors that were
    pickled come back as tensors. Raises PickleNotAllowedError at the first `.pyd` member unless
    `allow_pickle=True`.
    """
    for path in legacy_shards(shard_dir):
        current: dict[str, Any] | None = None
        for name, data in _members(path, max_member_bytes):
            key, _, rest = name.partition(".")
            field, _, ext = rest.rpartition(".") if "." in rest else (rest, "", "")
            if not key or not field:
                raise ShardError("member name is not <key>.<field>.<ext>", shard=path.name, member=name)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[field] = _decode(name, ext, data, allow_pickle, path.name)
        if current is not None:
            yield current


def convert_legacy_shards(shard_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                          allow_pickle: bool = False, shard_size: int = 1000,
                          compression: str = "none", **writer_options: Any) -> dict[str, Any]:
    """Rewrite a legacy dataset as a neurocodec dataset (no pickle from then on); return the summary."""
    from neurocodec.plugin.modality import as_array, is_tensor
    from neurocodec.dataset.writer import WebDatasetWriter

    with WebDatasetWriter(output_dir, shard_size, compression, **writer_options) as writer:
        for sample in iter_legacy_samples(shard_dir, allow_pickle=allow_pickle):
            sample.pop("__key__")
            metadata = sample.pop("metadata", None)
            fields = {k: (as_array(v) if is_tensor(v) else v) for k, v in sample.items()}
            writer.write_sample(fields, metadata=metadata if isinstance(metadata, dict) else None)
    return writer.finalize()
