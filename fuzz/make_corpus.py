"""Write the seed corpus of fuzz/fuzz_parsers.py from a real dataset.

    python fuzz/make_corpus.py [OUT_DIR]      # default: fuzz/corpus

A small dataset is written with `WebDatasetWriter` (uncompressed and zstd) into a temporary
directory; its manifest, indexes, member headers and `.npy` payloads become the `valid-*` seeds,
which every parser must accept. The `hostile-*` seeds are the same files forged the way issue 11
describes (object, bytes and datetime dtypes, a 2**63+5 decoded size, 999,999,999 samples, a
base-256 tar size, an object `.npy` over pointer-like bytes...), which every parser must refuse
with its documented error. `odd-*` seeds are strange but not the parser's to refuse (a codec id
is checked against the installed plugins when a dataset is opened, not by the parser). Seeds are
named by what they are, so a finding's input reads as a reproducer. Rerun this when the format
changes; the files are deterministic.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_parsers import BLOCK, INDEX_PREFIX  # noqa: E402

OUT = Path(__file__).resolve().parent / "corpus"


def write_dataset(root: Path, compression: str) -> Path:
    """Three samples (a fixed float array, packed spike counts, metadata) in shards of 2."""
    from neurocodec import WebDatasetWriter

    rng = np.random.default_rng(3)
    with WebDatasetWriter(root, shard_size=2, compression=compression, fsync=False) as w:
        for i in range(3):
            w.write_sample({"lfp": rng.standard_normal((2, 8)).astype("<f4"), "spikes": rng.poisson(2, (3, 5))},
                           {"trial": i})
    return root


def npy_header(descr: str, shape: tuple, fortran: bool = False) -> bytes:
    """The NPY 1.0 header numpy writes for `descr` and `shape`."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return out.getvalue()


def manifest_seeds(root: Path) -> dict[str, bytes]:
    """The manifest as written, and forged copies."""
    text = (root / "dataset_metadata.json").read_text()
    seeds = {"valid": text.encode()}

    def forged(name: str, edit) -> None:
        doc = json.loads(text)
        edit(doc)
        seeds[name] = json.dumps(doc, indent=1).encode()

    lfp = next(i for i, f in enumerate(json.loads(text)["fields"]) if f["name"] == "lfp")
    dtypes = {"object": "|O", "bytes-S8": "S8", "datetime-M8ns": "M8[ns]", "big-endian-f4": ">f4",
              "float128": "<f16", "stringdtype-T": "T", "structured": "<f4,<i4"}
    for name, dtype in dtypes.items():
        forged(f"hostile-dtype-{name}", lambda d, t=dtype: d["fields"][lfp].update(dtype=t))
    forged("hostile-999999999-samples", lambda d: (d["shards"][0].update(samples=999_999_998),
                                                   d["shards"][1].update(first_sample=999_999_998),
                                                   d.update(total_samples=999_999_999)))
    forged("hostile-max-raw-2-64-plus-5", lambda d: d["fields"][lfp].update(max_raw_bytes=2**64 + 5))
    forged("hostile-max-raw-900MiB", lambda d: d["fields"][lfp].update(max_raw_bytes=900 << 20))
    forged("hostile-negative-shape", lambda d: d["fields"][lfp].update(shape=[-1, 8]))
    forged("odd-huge-shape", lambda d: d["fields"][lfp].update(shape=[2**63, 2**63]))
    forged("odd-unknown-codec", lambda d: d["fields"][lfp].update(codec={"id": "nosuch"}))
    seeds["hostile-deep-nesting"] = b"[" * 5_000 + b"]" * 5_000
    seeds["hostile-not-utf8"] = b"\xff\xfe{" + text.encode()[1:]
    return seeds


def index_seeds(root: Path) -> dict[str, bytes]:
    """Shard 0's index with the prefix a reader would use, and forged rows."""
    doc = json.loads((root / "dataset_metadata.json").read_text())
    shard, members = doc["shards"][0], len(doc["fields"])
    data = (root / shard["index"]).read_bytes()
    rows = np.load(io.BytesIO(data))
    max_raw = max(f["max_raw_bytes"] for f in doc["fields"])
    max_stored = max(f["max_stored_bytes"] for f in doc["fields"])

    def seed(body: bytes, raw: int = max_raw, samples: int = shard["samples"]) -> bytes:
        return INDEX_PREFIX.pack(samples, members, shard["bytes"], raw, max_stored) + body

    def with_rows(edit) -> bytes:
        forged = rows.copy()
        edit(forged)
        out = io.BytesIO()
        np.save(out, forged)
        return out.getvalue()

    return {
        "valid": seed(data),
        "hostile-raw-2-63-plus-5": seed(with_rows(lambda r: r.__setitem__((0, 0, 2), 2**63 + 5)), raw=2**64 - 1),
        "hostile-raw-2-64-minus-1": seed(with_rows(lambda r: r.__setitem__((0, 0, 2), 2**64 - 1)), raw=2**64 - 1),
        "hostile-offset-past-end": seed(with_rows(lambda r: r.__setitem__((1, -1, 0), 2**40))),
        "hostile-stored-2-63": seed(with_rows(lambda r: r.__setitem__((0, 1, 1), 2**63)), raw=2**64 - 1),
        "hostile-999999999-samples": seed(data, samples=65535),
        "hostile-object-dtype": seed(npy_header("|O", rows.shape) + b"\x41" * (rows.size * 8)),
        "hostile-fortran": seed(npy_header("<u8", rows.shape, fortran=True) + rows.tobytes(order="F")),
        "hostile-int64": seed(npy_header("<i8", rows.shape) + rows.tobytes()),
        "hostile-truncated": seed(data[:-9]),
    }


def tar_seeds(root: Path) -> dict[str, bytes]:
    """The first member header of shard 0, and forged headers (checksums recomputed)."""
    block = (root / "shard_000000.tar").read_bytes()[:BLOCK]

    def forged(start: int, value: bytes) -> bytes:
        out = bytearray(block)
        out[start:start + len(value)] = value
        out[148:156] = b" " * 8
        out[148:156] = b"%06o\0 " % sum(out)
        return bytes(out)

    return {
        "valid": block,
        "hostile-base256-size": forged(124, b"\x80" + b"\0" * 3 + (2**63 + 5).to_bytes(8, "big")),
        "odd-12-digit-size": forged(124, b"777777777777"),
        "hostile-symlink": forged(156, b"2"),
        "hostile-pax": forged(156, b"x"),
        "hostile-long-prefix": forged(345, b"a" * 155),
        "hostile-unterminated-name": forged(0, b"n" * 100),
        "hostile-non-ascii-name": forged(0, b"\xff\xfe.npy\0"),
        "hostile-bad-checksum": block[:148] + b"0000000\0" + block[156:],
        "hostile-short": block[:100],
    }


def npy_seeds(root: Path, dataset_npy: list[bytes]) -> dict[str, bytes]:
    """`.npy` members as written, and forged payloads (the headers numpy writes)."""
    seeds = {f"valid-{i}": data for i, data in enumerate(dataset_npy)}
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}, 2], dtype=object), allow_pickle=True)
    seeds.update({
        "hostile-object-over-pointers": npy_header("|O", (2, 8)) + b"\x41" * 128,
        "hostile-object-pickle": pickled.getvalue(),
        "hostile-bytes-S8": npy_header("|S8", (2,)) + b"A" * 16,
        "hostile-datetime": npy_header("<M8[ns]", (2,)) + bytes(16),
        "hostile-big-endian": npy_header(">f4", (2, 8)) + bytes(64),
        "hostile-float128": npy_header("<f16", (2,)) + bytes(32),
        "hostile-shape-mismatch": npy_header("<f4", (2, 9)) + bytes(64),
        "hostile-huge-shape": npy_header("<f4", (2**62, 2**62)) + bytes(64),
        "hostile-zero-size-huge-dims": npy_header("<f4", (2**63, 0)),  # found by atheris: numpy's ValueError escaped
        "hostile-zero-size-dims-overflow": npy_header("<f4", (2**40, 2**40, 0)),
        "hostile-header-length": b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + bytes(64),
        "hostile-version-9": b"\x93NUMPY\x09\x00" + bytes(64),
    })
    return seeds


def build(out: Path) -> dict[str, int]:
    """Write every target's seeds under `out/<target>/`; return the count per target."""
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_dataset(Path(tmp) / "none", "none")
        zstd = write_dataset(Path(tmp) / "zstd", "zstd")
        payloads = member_payloads(plain)
        groups = {
            "manifest": {**manifest_seeds(plain), "valid-zstd": (zstd / "dataset_metadata.json").read_bytes()},
            "index": index_seeds(plain),
            "tar": tar_seeds(plain),
            "npy": npy_seeds(plain, payloads),
        }
    for target, seeds in groups.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        counts[target] = len(seeds)
    return counts


def member_payloads(root: Path) -> list[bytes]:
    """The `.npy` payloads of shard 0 of an uncompressed dataset (lfp, packed spikes)."""
    data = (root / "shard_000000.tar").read_bytes()
    rows = np.load(root / "shard_000000.idx")
    out = []
    for offset, stored, _raw, _crc in rows.reshape(-1, 4).tolist():
        payload = data[offset:offset + stored]
        if payload.startswith(b"\x93NUMPY"):
            out.append(payload)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    print(build(target))
