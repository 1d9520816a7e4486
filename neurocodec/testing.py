"""Test helpers for plugin authors (in the spirit of `structlog.testing` and `tox.pytest`).

In a plugin's own test suite::

    from neurocodec.testing import assert_round_trip, check_codec, registry_with
    import my_plugin

    def test_photometry_round_trip(tmp_path):
        registry = registry_with(my_plugin)
        assert_round_trip([{"photometry": np.ones((10, 3), "f4")}], tmp_path, registry=registry)

    def test_codec():
        check_codec(MyCodec(), [np.arange(5)])

Every check is bit-exact: dtypes and shapes must match, and array values are compared byte for
byte (so NaN payloads and signed zeros count).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from neurocodec.plugin.codecs import Codec
from neurocodec.format.manifest import FieldSpec
from neurocodec.dataset.reader import KEY, Dataset
from neurocodec.plugin.modality import as_array, is_array
from neurocodec.plugin.registry import Registry

__all__ = ["assert_round_trip", "assert_values_equal", "check_codec", "field_for", "registry_with", "round_trip"]


def _check(condition: object, message: str) -> None:
    # Explicit, so the checks hold under `python -O` too.
    if not condition:
        raise AssertionError(message)


def registry_with(*plugins: Any, entry_points: bool = True) -> Registry:
    """A fresh, isolated Registry: the installed plugins (unless `entry_points=False`) plus `plugins`.

    Each plugin is a module or object with `@hookimpl` functions, or a `(name, plugin)` pair;
    unnamed plugins are named after their module (or `test-plugin-<n>`). Nothing is cached, so
    the default registry used by other code is not affected.
    """
    from neurocodec.plugin.manager import load_registry

    named = []
    for n, plugin in enumerate(plugins):
        if isinstance(plugin, tuple):
            named.append(plugin)
        else:
            named.append((getattr(plugin, "__name__", None) or f"test-plugin-{n}", plugin))
    return load_registry(entry_points=entry_points, plugins=named)


def round_trip(
    samples: Sequence[Mapping[str, Any]], tmp_path: str | os.PathLike, *, compression: str = "none",
    registry: Registry | None = None, metadata: Sequence[Mapping[str, Any]] | None = None,
    shard_size: int = 3, **writer_options: Any,
) -> list[dict[str, Any]]:
    """Write `samples` with WebDatasetWriter into a new directory under `tmp_path`, read them back.

    Returns the decoded samples in order, each a dict of field to value plus `metadata` (without
    the `__key__`). The dataset is also fully verified (`Dataset.verify_all`). Extra keyword
    arguments go to the writer (e.g. `modality_options`); `fsync` defaults to False for speed.
    """
    from neurocodec.dataset.writer import WebDatasetWriter

    out = Path(tempfile.mkdtemp(prefix="round-trip-", dir=tmp_path))
    writer_options.setdefault("fsync", False)
    with WebDatasetWriter(out, shard_size, compression, overwrite=True, registry=registry,
                          **writer_options) as writer:
        for i, sample in enumerate(samples):
            writer.write_sample(sample, metadata=None if metadata is None else metadata[i])
    with Dataset(out, registry=registry) as ds:
        _check(ds.verify_all() == len(samples), f"{out}: verify_all did not check every sample")
        return [{k: v for k, v in s.items() if k != KEY} for s in ds]


def assert_values_equal(got: Any, want: Any, where: str = "value") -> None:
    """Assert `got` equals `want` bit-exactly; `where` names the value in the failure message.

    Arrays (torch tensors in `want` are converted) must have the same dtype, shape and bytes.
    Python floats compare exactly, the sign of zero included (NaN equals NaN); numpy scalars in
    `want` compare as Python values; dicts and lists are compared element by element.
    """
    if is_array(want):
        want = as_array(want)
        _check(isinstance(got, np.ndarray), f"{where}: expected an array, got {type(got).__name__}")
        _check(got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}")
        _check(got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}")
        _check(np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(),
               f"{where}: values differ")
        return
    if isinstance(want, np.generic):
        want = want.item()
    if isinstance(want, Mapping):
        _check(isinstance(got, Mapping), f"{where}: expected a dict, got {type(got).__name__}")
        _check(set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}")
        for key in want:
            assert_values_equal(got[key], want[key], f"{where}[{key!r}]")
        return
    if isinstance(want, (list, tuple)):
        _check(isinstance(got, (list, tuple)), f"{where}: expected a list, got {type(got).__name__}")
        _check(len(got) == len(want), f"{where}: length {len(got)} != {len(want)}")
        for i, (g, w) in enumerate(zip(got, want)):
            assert_values_equal(g, w, f"{where}[{i}]")
        return
    if isinstance(want, float):
        _check(type(got) is float, f"{where}: expected a float, got {got!r}")
        if math.isnan(want):
            same = math.isnan(got)
        else:  # -0.0 == 0.0, so compare signs too
            same = got == want and math.copysign(1, got) == math.copysign(1, want)
        _check(same, f"{where}: {got!r} != {want!r}")
        return
    _check(type(got) is type(want), f"{where}: type {type(got).__name__} != {type(want).__name__}")
    _check(got == want, f"{where}: {got!r} != {want!r}")


def assert_round_trip(
    samples: Sequence[Mapping[str, Any]], tmp_path: str | os.PathLike, *, compression: str = "none",
    registry: Registry | None = None, expected: Sequence[Mapping[str, Any]] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None, **writer_options: Any,
) -> list[dict[str, Any]]:
    """Round-trip `samples` (see `round_trip`) and assert every field comes back bit-exactly.

    `expected` gives the values to expect when they legitimately differ from those written (for
    example video frames converted to uint8); by default the written samples themselves. The
    metadata is checked when given. Returns the decoded samples.
    """
    got = round_trip(samples, tmp_path, compression=compression, registry=registry,
                     metadata=metadata, **writer_options)
    expected = samples if expected is None else expected
    _check(len(got) == len(expected), f"read {len(got)} samples, expected {len(expected)}")
    for i, (g, want) in enumerate(zip(got, expected)):
        _check(set(g) == set(want) | {"metadata"}, f"sample {i}: fields {sorted(g)}")
        for name, value in want.items():
            assert_values_equal(g[name], value, f"sample {i} field {name!r} ({compression})")
        if metadata is not None:
            assert_values_equal(g["metadata"], metadata[i], f"sample {i} metadata")
    return got


def field_for(codec: Codec, value: Any, name: str = "field") -> FieldSpec:
    """A FieldSpec describing `value` as the writer would record it for `codec` (fixed shape):
    for array codecs, the dtype and shape `codec.describe_value` gives (a value object such as
    spike events describes the array it decodes to), its bytes as `max_value_bytes` and
    `max_raw_bytes`, and its payload's size as `max_raw_bytes` where larger."""
    form = codec.describe_value(value) if codec.kind == "array" else None
    if codec.kind == "array" and form is None:
        raise TypeError(f"codec {codec.codec_id!r} does not describe a {type(value).__name__} as an array")
    dtype = None if form is None else np.dtype(form[0])
    shape = None if form is None else tuple(form[1])
    nbytes = 0 if form is None else dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    payload = len(codec.encode(value))
    return FieldSpec(
        name=name, modality=name, kind=codec.kind, codec=codec.get_config(), extension=codec.extension,
        plugin="test", plugin_version="", dtype=None if dtype is None else dtype.str, shape=shape,
        max_raw_bytes=max(payload, nbytes), max_stored_bytes=payload, max_value_bytes=nbytes,
    )


def check_codec(codec: Codec, values: Iterable[Any], field: FieldSpec | None = None,
                expect: Callable[[Any], Any] | None = None) -> list[Any]:
    """Encode and decode each value with `codec` directly; assert they come back bit-exactly
    (as `expect(value)` when given: what a value object decodes to, e.g. binned counts).

    Also checks that the codec's config round-trips through `from_config`, that encoding is
    deterministic, and that decoding works from both bytes and a memoryview (the reader passes
    either). `field` defaults to one built from each value (`field_for`). Returns the decoded
    values.
    """
    rebuilt = type(codec).from_config(codec.get_config())
    _check(rebuilt == codec, f"{codec!r}: from_config(get_config()) gives {rebuilt!r}")
    decoded = []
    for i, value in enumerate(values):
        spec = field or field_for(codec, value)
        data = codec.encode(value)
        _check(isinstance(data, bytes), f"value {i}: encode returned {type(data).__name__}, not bytes")
        _check(codec.encode(value) == data, f"value {i}: encoding is not deterministic")
        for form in (data, memoryview(data)):
            got = codec.decode(form, spec)
            want = value if expect is None else expect(value)
            assert_values_equal(got, want, f"{codec.codec_id} value {i} (from {type(form).__name__})")
        decoded.append(got)
    return decoded
