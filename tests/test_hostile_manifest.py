"""Hostile shards, part 4: the manifest (missing, not a regular file, not JSON, and every
field of it out of range, of the wrong type, inconsistent or naming what is not installed).

Shared parts (the base dataset, the case registry, the checks) are in tests/hostile_corpus.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

import hostile as h
from hostile_corpus import SAMPLES, SHARD0, Case, Expect, registrar, reject
from neurocodec.errors import DatasetError, UnknownCodecError

pytestmark = pytest.mark.timeout(120)

CASES: list[Case] = []
case = registrar(CASES)


# -- manifest files that are not what their names say ----------------------------------------------

@case()
def manifest_is_fifo(root: Path, compression: str) -> Expect:
    """A FIFO under the manifest's name. Check: regular files only, opened without blocking."""
    path = root / h.MANIFEST
    path.unlink()
    os.mkfifo(path)
    return Expect(DatasetError, r"cannot read \(not a regular file\)", shard=None)


@case()
def manifest_is_directory(root: Path, compression: str) -> Expect:
    """A directory under the manifest's name. Check: regular files only."""
    path = root / h.MANIFEST
    path.unlink()
    path.mkdir()
    return Expect(DatasetError, r"cannot read", shard=None)


@case()
def manifest_missing(root: Path, compression: str) -> Expect:
    """No manifest: a writer that did not finish. Check: the manifest is required."""
    (root / h.MANIFEST).unlink()
    return Expect(DatasetError, r"has no \.neurocodec/dataset_metadata\.json", shard=None)


# -- the manifest ----------------------------------------------------------------------------------

def _manifest_case(edit: Callable[[dict], object], match: str, error: type = DatasetError):
    def build(root: Path, compression: str) -> Expect:
        doc = h.load_manifest(root)
        result = edit(doc)
        if isinstance(result, bytes):
            (root / h.MANIFEST).write_bytes(result)
        else:
            h.save_manifest(root, doc if result is None else result)
        return Expect(error, match, shard=None)
    return build


def _set(path: str, value: object) -> Callable[[dict], None]:
    """Edit `doc[a][b]...` given as "a.b.c" (integers index lists)."""
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _delete(path: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return edit


def _empty_first_shard(doc: dict) -> None:
    """Shard 0 claims no samples, everything else consistent with that."""
    doc["shards"][0]["samples"] = 0
    doc["total_samples"] = SAMPLES - 2
    for entry in doc["shards"][1:]:
        entry["first_sample"] -= 2


MANIFEST_CASES = {
    # Check: JSON syntax and structure.
    "not_json": (lambda d: b"{not json", r"not valid JSON"),
    "deeply_nested": (lambda d: b"[" * 200_000 + b"]" * 200_000, r"not valid JSON"),
    "json_array": (lambda d: [d], r"must be a JSON object"),
    "other_format": (_set("format", "webdataset"), r"not a neurocodec manifest"),
    # Check: format version.
    "future_format_version": (_set("format_version", 4), r"format_version 4 is newer than this neurocodec reads"),
    "far_future_format_version": (_set("format_version", 10**30), r"is newer than this neurocodec reads"),
    "format_version_string": (_set("format_version", "1"), r"format_version must be an? (positive )?integer"),
    "format_version_float": (_set("format_version", 1.0), r"format_version must be an? (positive )?integer"),
    # Check: compression.
    "unknown_compression": (_set("compression", "lz4"), r"unknown compression 'lz4'"),
    "compression_null": (_set("compression", None), r"unknown compression None"),
    # Check: counts and totals.
    "total_samples_wrong": (_set("total_samples", SAMPLES + 1), r"shards hold 5 samples but total_samples is 6"),
    "total_samples_negative": (_set("total_samples", -1), r"total_samples must be a non-negative integer"),
    "total_samples_string": (_set("total_samples", "5"), r"total_samples must be a non-negative integer"),
    "total_samples_bool": (_set("total_samples", True), r"total_samples must be a non-negative integer"),
    "total_samples_huge": (lambda d: d.update(total_samples=10**12) or d["shards"][-1].update(samples=10**12 - 4),
                           r"too many samples"),
    "shard_samples_negative": (_set("shards.0.samples", -2), r"shards\[0\]\.samples must be a non-negative"),
    "shard_samples_zero": (_empty_first_shard, r"shards\[0\]\.samples must be positive"),
    "shard_samples_float": (_set("shards.0.samples", 2.0), r"shards\[0\]\.samples must be a non-negative"),
    "shard_bytes_negative": (_set("shards.0.bytes", -1), r"shards\[0\]\.bytes must be a non-negative"),
    "shard_first_sample_wrong": (_set("shards.1.first_sample", 3), r"shards\[1\]\.first_sample is 3, expected 2"),
    "index_bytes_string": (_set("shards.0.index_bytes", "416"), r"index_bytes must be a non-negative"),
    "sha256_not_string": (_set("shards.0.sha256", 5), r"sha256 must be a string"),
    "max_raw_bytes_negative": (_set("fields.0.max_raw_bytes", -1), r"max_raw_bytes must be a non-negative"),
    "max_stored_bytes_beyond_uint64": (_set("fields.0.max_stored_bytes", 2**64),
                                       r"max_stored_bytes of field 'lfp' is 18446744073709551616, beyond the tar"),
    "max_raw_bytes_huge": (_set("fields.2.max_raw_bytes", 10**30),
                           r"fields\[2\]\.max_raw_bytes: field 'metadata' declares members of up to 10{30} bytes "
                           r"decoded, above the per-member ceiling"),
    # Check: shard and index names.
    "shard_name_traversal": (_set("shards.0.name", "../shard_000000.tar"), r"is not a shard file name"),
    "shard_name_absolute": (_set("shards.0.name", "/etc/passwd"), r"is not a shard file name"),
    "shard_names_repeat": (lambda d: d["shards"][1].update(name=SHARD0, index=".shard_000000.idx"),
                           r"shard names repeat"),
    "index_name_of_another_shard": (_set("shards.0.index", ".shard_000001.idx"), r"index must be '\.shard_000000\.idx'"),
    "index_name_traversal": (_set("shards.0.index", "../../etc/passwd"), r"index must be"),
    "shards_not_list": (_set("shards", {"0": {}}), r"shards must be a list"),
    "shard_not_object": (_set("shards.0", "shard_000000.tar"), r"shards\[0\] must be an object"),
    # Check: fields.
    "fields_empty": (_set("fields", []), r"fields must be a non-empty list"),
    "metadata_field_not_last": (lambda d: d["fields"].reverse(), r"the last field must be the json metadata field"),
    "field_names_repeat": (_set("fields.1.name", "lfp"), r"field names repeat"),
    "field_name_with_dot": (_set("fields.0.name", "lf.p"), r"contains a dot"),
    "field_name_traversal": (_set("fields.0.name", "../x"), r"fields\[0\]\.name"),
    "field_kind_unknown": (_set("fields.0.kind", "pickle"), r"kind must be one of"),
    "extension_traversal": (_set("fields.0.extension", "../npy"), r"is not a short alphanumeric extension"),
    "array_dtype_missing": (_set("fields.0.dtype", None), r"dtype must be a string for arrays"),
    "array_shape_negative": (_set("fields.0.shape", [2, -16]), r"shape must be a list of lengths or nulls"),
    "array_shape_string": (_set("fields.0.shape", "(2, 16)"), r"shape must be a list"),
    "codec_missing_id": (_set("fields.0.codec", {"pack_integers": False}), r"codec must be an object with a string id"),
    "codec_not_object": (_set("fields.0.codec", "npy"), r"codec must be an object"),
    "writer_not_object": (_set("writer", []), r"writer must be an object"),
    "plugin_missing": (_delete("fields.0.plugin"), r"plugin must be a string"),
    # Check: each field's codec decodes its kind (Dataset.__init__), and array dtypes are one of
    # npy.DTYPES, matched as text (the manifest parser; tests/test_hostile_dtypes.py tries them all).
    "codec_kind_mismatch": (_set("fields.0.codec", {"id": "json"}),
                            r"field 'lfp' is of kind 'array' but its codec 'json' decodes 'json'"),
    "array_dtype_structured": (_set("fields.0.dtype", "[('a','<f4')]"), r"is not a dtype this format stores"),
    "array_dtype_garbage": (_set("fields.0.dtype", "not-a-dtype"), r"is not a dtype this format stores"),
    # numpy would hand these to ast.literal_eval (a SyntaxError escaped; deep nesting can crash).
    "array_dtype_comma_string": (_set("fields.0.dtype", "f4,,"), r"is not a dtype this format stores"),
    "array_dtype_subarray": (_set("fields.0.dtype", "(2,)f4"), r"is not a dtype this format stores"),
    "array_dtype_nested_parens": (_set("fields.0.dtype", "f4," + "(" * 5000 + ")" * 5000 + "f4"),
                                  r"is not a dtype this format stores"),
    "array_dtype_not_string": (_set("fields.0.dtype", 4), r"dtype must be a string"),
}


CASES += [Case(f"manifest_{n}", "none", _manifest_case(edit, match))
          for n, (edit, match) in MANIFEST_CASES.items()]


@case()
def manifest_not_utf8(root: Path, compression: str) -> Expect:
    """Manifest bytes that are not UTF-8. Check: JSON decoding."""
    path = root / h.MANIFEST
    path.write_bytes(path.read_bytes().replace(b'"ok"', b'"\xff\xfe"').replace(b'"lfp"', b'"\xc3\x28"', 1))
    return Expect(DatasetError, r"not valid JSON", shard=None)


@case()
def manifest_unknown_codec(root: Path, compression: str) -> Expect:
    """A codec id no installed plugin provides. Check: codec lookup names the plugin to install."""
    doc = h.load_manifest(root)
    doc["fields"][0].update(codec={"id": "calcium-delta"}, plugin="calcium", plugin_version="2.1.0",
                            distribution="neurocodec-calcium")
    h.save_manifest(root, doc)
    return Expect(UnknownCodecError,
                  r"codec 'calcium-delta' \(field 'lfp'\) .*install.*plugin 'calcium' "
                  r"\(pip install neurocodec-calcium==2\.1\.0\)", shard=None)


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case_is_rejected(c: Case, base, tmp_path):
    reject(c, base, tmp_path)
