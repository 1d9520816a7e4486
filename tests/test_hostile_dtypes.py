"""Hostile dtypes: every numpy dtype spelling, in the manifest and in `.npy` headers.

Only the dtypes of `neurocodec.npy.DTYPES`, spelled exactly so, are accepted anywhere (issue 11,
defects 1 and 6). Before, a manifest declaring `|O` over a `.npy` payload with the same header
made the fast fixed-shape decoder build an object array over the payload's bytes, and reading
the sample dereferenced them as pointers (SIGSEGV); `S8`, `M8[ns]` and `>f4` reached the
loaders, whose collate raised TypeError; the writer stored float128, which no loader batches.

The dangerous reads run in a child process, so a crash fails the test (naming the case)
instead of killing pytest. Each case's payload carries exactly the header the old fast decoder
matched (numpy's own header writer, the same bytes), with its data made of 0x41 bytes, so a
missing check dereferences 0x4141414141414141.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import hostile as h
from loader_util import child_env
from neurocodec import WebDatasetWriter, npy
from neurocodec.plugin.codecs import CodecError, NpyCodec
from neurocodec.errors import SampleError
from neurocodec.format.manifest import FieldSpec

pytestmark = pytest.mark.timeout(300)

LFP_SHAPE, SPIKES_SHAPE = (2, 16), (2, 3)
ALLOWED = ("|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16")
"""The dtypes the format stores, written out here independently of `neurocodec.npy.DTYPES`."""
WRITER_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128"]


def candidate_dtypes() -> list[str]:
    """Every numpy type character with every byte-order prefix, sized kinds at many sizes,
    datetimes with units, names, and strings numpy evaluates (comma and shape strings)."""
    out = set()
    orders = ("", "<", ">", "|", "=")
    for char in np.typecodes["All"]:
        out.update(order + char for order in orders)
    for kind in "biufc":
        out.update(f"{order}{kind}{size}" for order in orders for size in (1, 2, 3, 4, 8, 16, 32))
    for kind in "SUVa":
        out.update(f"{order}{kind}{size}" for order in orders for size in (0, 1, 8))
    for kind in "Mm":
        out.update(f"{order}{kind}8{unit}" for order in ("", "<", ">")
                   for unit in ("", "[ns]", "[s]", "[D]", "[generic]"))
    out |= {"bool", "int", "float", "complex", "float32", "float128", "longdouble", "complex256",
            "object", "str", "bytes", "O", "f4,f4", "(2,)f4", "[('a','<f4')]", "T", "not-a-dtype", ""}
    return sorted(out)


def parse(spelling: str) -> np.dtype | None:
    """numpy's dtype for `spelling`, or None if numpy has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.dtype(spelling)
        except Exception:
            return None


def npy_payload(descr: str, itemsize: int, shape: tuple[int, ...], byte: int = 0x41) -> bytes:
    """numpy's own NPY 1.0 header for `descr` and `shape` (byte-identical to what the fast
    decoder matches), then `itemsize * size` bytes of `byte`."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue() + bytes([byte]) * (itemsize * int(np.prod(shape)))


def payload_for(spelling: str, shape: tuple[int, ...]) -> tuple[str, bytes]:
    """The header descr and payload a dataset declaring `spelling` would carry: numpy's
    `dtype.str` and 0x41 data (0x01 for bool); a harmless `<f4` array when numpy has no such dtype."""
    dtype = parse(spelling)
    if dtype is None or dtype.str.startswith("["):
        return "<f4", npy_payload("<f4", 4, shape)
    return dtype.str, npy_payload(dtype.str, dtype.itemsize, shape, 0x01 if dtype.kind == "b" else 0x41)


def digest(dtype: str, shape: tuple[int, ...], data: bytes) -> str:
    """What the child reports for a decoded array: dtype string, shape and the bytes' SHA-256."""
    return f"{dtype}|{list(shape)}|{hashlib.sha256(data).hexdigest()}"


def write_base(root: Path, samples: int = 1, shard_size: int = 1) -> Path:
    """A small valid dataset: lfp `<f4` (2, 16), spikes `<i8` (2, 3) packed, metadata."""
    rng = np.random.default_rng(5)
    with WebDatasetWriter(root, shard_size=shard_size, fsync=False) as w:
        for i in range(samples):
            w.write_sample({"lfp": rng.standard_normal(LFP_SHAPE).astype("<f4"),
                            "spikes": rng.integers(0, 9, SPIKES_SHAPE)}, {"i": i})
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_base(tmp_path_factory.mktemp("dtypes") / "base")


def declare(root: Path, field: str, dtype: str) -> None:
    """Set `field`'s manifest dtype to `dtype`, verbatim."""
    doc = h.load_manifest(root)
    doc["fields"][h.field_column(root, field)]["dtype"] = dtype
    h.save_manifest(root, doc)


# -- one child reads them all ---------------------------------------------------------------------

CHILD = textwrap.dedent(r"""
    import hashlib, json, sys
    from neurocodec import Dataset

    for n, job in enumerate(json.load(open(sys.argv[1]))):
        print(json.dumps({"started": n}), flush=True)
        try:
            with Dataset(job["path"]) as ds:
                value = ds[job["sample"]][job["field"]]
            value.sum()  # touch every element, as a training loop would
            got = {"value": f"{value.dtype.str}|{list(value.shape)}|{hashlib.sha256(value.tobytes()).hexdigest()}"}
        except BaseException as exc:
            got = {"error": type(exc).__name__, "message": str(exc)[:600]}
        print(json.dumps({"done": n, **got}), flush=True)
""")


def run_child(jobs: list[dict], tmp_path: Path) -> list[dict]:
    """Read every job in one child process; fail naming the case if the child dies."""
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "jobs.json")], capture_output=True,
                          text=True, timeout=240, env=child_env())
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [line for line in lines if "done" in line]
    if proc.returncode != 0:
        started = [line["started"] for line in lines if "started" in line]
        case = jobs[started[-1]]["case"] if started else None
        pytest.fail(f"the reading child died with status {proc.returncode} on case {case}: {proc.stderr[-2000:]}")
    assert len(done) == len(jobs)
    return done


def check(jobs: list[dict], results: list[dict]) -> None:
    """Each result is what its job expects: the exact value, or the typed error naming the field."""
    wrong = []
    for job, got in zip(jobs, results):
        want = job["expect"]
        if "value" in want:
            ok = got.get("value") == want["value"]
        else:
            ok = got.get("error") == want["error"] and re.search(want["match"], got.get("message", "")) is not None
        if not ok:
            wrong.append((job["case"], want, got))
    assert not wrong, f"{len(wrong)} of {len(jobs)} cases wrong, first ones: {wrong[:5]}"


@pytest.mark.slow
def test_every_dtype_spelling_in_the_manifest(base, tmp_path):
    """Each spelling declared for lfp, over a payload with the matching header: refused with
    DatasetError naming the field, unless it is one of npy.DTYPES (then decoded exactly)."""
    jobs = []
    for n, spelling in enumerate(candidate_dtypes()):
        root = h.copy_dataset(base, tmp_path / f"m{n}")
        descr, payload = payload_for(spelling, LFP_SHAPE)
        h.replace_member(root, 0, 0, "lfp", payload=payload)
        declare(root, "lfp", spelling)
        if spelling in ALLOWED:
            header = len(payload) - int(np.prod(LFP_SHAPE)) * parse(spelling).itemsize
            expect = {"value": digest(spelling, LFP_SHAPE, payload[header:])}
        else:
            expect = {"error": "DatasetError", "match": r"field 'lfp' is not a dtype this format stores"}
        jobs.append({"case": f"manifest dtype {spelling!r}", "path": str(root), "sample": 0, "field": "lfp",
                     "expect": expect})
    assert sum("value" in j["expect"] for j in jobs) == len(ALLOWED)  # every allowed one tried
    check(jobs, run_child(jobs, tmp_path))


def test_every_dtype_in_npy_headers(base, tmp_path):
    """Each dtype numpy can name, as the header of an lfp (`<f4`) and of a packed spikes (`<i8`)
    payload under an honest manifest: refused with ShardError naming the member, except the
    field's own dtype and, for packed integers, the smaller integer dtypes that widen to it."""
    dtypes = {d.str: d for d in map(parse, candidate_dtypes()) if d is not None}
    assert {"|O", "|S8", "<U8", "|V8", "<M8[ns]", ">f4", "<f16", "<c32", "|b1"} <= set(dtypes)
    jobs = []
    for field, shape, want in (("lfp", LFP_SHAPE, "<f4"), ("spikes", SPIKES_SHAPE, "<i8")):
        for n, (descr, dtype) in enumerate(sorted(dtypes.items())):
            root = h.copy_dataset(base, tmp_path / f"{field}{n}")
            payload = npy_payload(descr, dtype.itemsize, shape, 0x01 if dtype.kind == "b" else 0x41)
            h.replace_member(root, 0, 0, field, payload=payload)
            packed = field == "spikes" and descr in ALLOWED and np.dtype(descr).kind in "iu" \
                and np.can_cast(descr, want)
            if descr == want or packed:
                data = payload[len(payload) - int(np.prod(shape)) * np.dtype(descr).itemsize:]
                value = np.frombuffer(data, dtype=descr).reshape(shape).astype(want)
                expect = {"value": digest(want, shape, value.tobytes())}
            else:
                expect = {"error": "ShardError", "match": rf"member sample_000000001\.{field}\.npy: "}
            jobs.append({"case": f"{field} npy descr {descr!r}", "path": str(root), "sample": 0, "field": field,
                         "expect": expect})
    check(jobs, run_child(jobs, tmp_path))


DIRECT_CHILD = textwrap.dedent(r"""
    import json, sys
    from neurocodec.plugin.codecs import NpyCodec
    from neurocodec.format.manifest import FieldSpec

    for n, job in enumerate(json.load(open(sys.argv[1]))):
        print(json.dumps({"started": n}), flush=True)
        field = FieldSpec(name="x", modality="array", kind="array", codec={"id": "npy"}, extension="npy",
                          plugin="", plugin_version="", dtype=job["dtype"], shape=tuple(job["shape"]))
        payload = bytes.fromhex(job["payload"])
        got = {}
        for packed in (False, True):
            codec = NpyCodec(pack_integers=packed)
            for path in ("decoder", "decode"):
                try:
                    value = codec.decoder(field)(payload) if path == "decoder" else codec.decode(payload, field)
                    value.sum()
                    got[f"{path}{int(packed)}"] = "value"
                except BaseException as exc:
                    got[f"{path}{int(packed)}"] = type(exc).__name__
        print(json.dumps({"done": n, "got": got}), flush=True)
""")


def test_codec_refuses_other_dtypes_even_from_a_fieldspec_built_directly(tmp_path):
    """The fast and slow decode paths check the dtype themselves, not only the manifest parser:
    a FieldSpec built in code with any other dtype raises CodecError before any byte is viewed."""
    jobs = []
    for spelling in candidate_dtypes():
        descr, payload = payload_for(spelling, (4,))
        jobs.append({"case": spelling, "dtype": spelling, "shape": [4], "payload": payload.hex()})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", DIRECT_CHILD, str(tmp_path / "jobs.json")], capture_output=True,
                          text=True, timeout=240, env=child_env())
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    if proc.returncode != 0:
        started = [line["started"] for line in lines if "started" in line]
        pytest.fail(f"child died ({proc.returncode}) on dtype {jobs[started[-1]]['dtype']!r}: {proc.stderr[-1500:]}")
    for job, line in zip(jobs, [line for line in lines if "done" in line]):
        got = set(line["got"].values())
        if job["dtype"] in ALLOWED:
            assert got == {"value"}, (job["dtype"], line["got"])
        else:  # the fast path's own check, or the NPY header's (both ValueError, wrapped by the reader)
            assert line["got"]["decoder0"] == "CodecError" and got <= {"CodecError", "NpyError"}, \
                (job["dtype"], line["got"])


def test_decoder_refusal_is_codec_error():
    field = FieldSpec(name="x", modality="array", kind="array", codec={"id": "npy"}, extension="npy",
                      plugin="", plugin_version="", dtype="|O", shape=(2,))
    with pytest.raises(CodecError, match=r"dtype '\|O' is not one this format stores"):
        NpyCodec().decoder(field)


def test_bool_payload_bytes_other_than_0_and_1_are_refused(base, tmp_path):
    """numpy and torch leave bools other than 0 and 1 undefined; the writer never stores them."""
    root = h.copy_dataset(base, tmp_path / "ds")
    h.replace_member(root, 0, 0, "lfp", payload=npy_payload("|b1", 1, LFP_SHAPE, 0x02))
    declare(root, "lfp", "|b1")
    from neurocodec import Dataset
    from neurocodec.errors import ShardError

    with Dataset(root) as ds, pytest.raises(ShardError, match=r"lfp\.npy: .*bytes other than 0 and 1"):
        ds[0]


# -- the writer: only what the loaders batch (defect 6) -------------------------------------------

@pytest.mark.parametrize("field", ["lfp", "anything"])
@pytest.mark.parametrize("dtype", ["longdouble", "clongdouble", "datetime64[ns]", "timedelta64[s]", "S8", "U4",
                                   "V8", "object"])
def test_writer_refuses_dtypes_the_loaders_cannot_batch(tmp_path, field, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = np.zeros((2, 3), dtype=dtype)
    w = WebDatasetWriter(tmp_path / "ds", fsync=False)
    with pytest.raises(SampleError, match=rf"field '{field}'.*dtype"):
        w.write_sample({field: value})
    w.abort()


def test_plugin_prepare_returning_other_dtype_is_refused_by_the_schema(tmp_path):
    """Whatever a modality's prepare returns (here a plugin's own, passing big-endian through),
    the schema stores only npy.DTYPES: a `>f4` would be recorded as a dtype no reader accepts."""
    from neurocodec.plugin.modality import ModalitySpec
    from neurocodec.plugin import hookimpl
    from neurocodec.testing import registry_with

    class RawPlugin:
        @staticmethod
        @hookimpl
        def neurocodec_register_modalities(register):
            register(ModalitySpec(name="raw-be", codec={"id": "npy", "pack_integers": False},
                                  prepare=lambda value, options: value))

    w = WebDatasetWriter(tmp_path / "ds", fsync=False, registry=registry_with(("raw", RawPlugin())))
    with pytest.raises(SampleError, match=r"field 'raw-be'.*>f4.*not one this format stores"):
        w.write_sample({"raw-be": np.zeros(3, ">f4")})
    w.abort()


def every_dtype_samples(n: int) -> list[dict[str, np.ndarray]]:
    """`n` samples with one field per writable dtype (big-endian input for two of them), plus
    a variable-length float field, with extreme values."""
    rng = np.random.default_rng(3)
    samples = []
    for i in range(n):
        sample = {}
        for name in WRITER_DTYPES:
            dtype = np.dtype(name)
            if dtype.kind == "b":
                value = rng.random((3, 2)) > 0.5
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, (3, 2), dtype=dtype, endpoint=True)
                value.flat[:2] = [info.min, info.max]
            elif dtype.kind == "f":
                value = rng.standard_normal((3, 2)).astype(dtype)
                value.flat[:2] = [np.finfo(dtype).max, np.inf]
            else:
                value = (rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2))).astype(dtype)
            sample[f"d-{name}"] = value
        sample["d-int32"] = sample["d-int32"].astype(">i4")  # big-endian input: stored as <i4
        sample["d-float64"] = sample["d-float64"].astype(">f8")
        sample["ragged"] = rng.standard_normal((i + 1, 2)).astype("<f4")
        samples.append(sample)
    return samples


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("every") / "ds"
    samples = every_dtype_samples(6)
    with WebDatasetWriter(root, shard_size=3, fsync=False) as w:
        for s in samples:
            w.write_sample(s)
    return root, samples


def test_every_writable_dtype_is_stored_little_endian_and_reads_back(every_dtype):
    from neurocodec import Dataset

    root, samples = every_dtype
    doc = h.load_manifest(root)
    stored = {f["name"]: f["dtype"] for f in doc["fields"] if f["kind"] == "array"}
    assert set(stored.values()) == set(npy.DTYPES) | {"<f4"}
    assert stored["d-int32"] == "<i4" and stored["d-float64"] == "<f8"
    with Dataset(root) as ds:
        for i, want in enumerate(samples):
            for name, value in want.items():
                got = ds[i][name]
                assert got.dtype.str == stored[name]
                np.testing.assert_array_equal(got, value)


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_every_writable_dtype_batches_through_the_loaders(every_dtype, workers):
    """Every dtype the writer stores collates into a tensor with equal values (with 2 workers
    through shared memory)."""
    import torch

    from neurocodec import create_webdataset_dataloader

    root, samples = every_dtype
    loader = create_webdataset_dataloader(root, batch_size=3, num_workers=workers, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        for name in samples[0]:
            tensor = batch[name]
            assert isinstance(tensor, torch.Tensor)
            for row in range(3):
                want = samples[3 * b + row][name]
                got = tensor[row].numpy()
                if name == "ragged":
                    assert batch["ragged_mask"][row].sum() == len(want)
                    got = got[:len(want)]
                assert got.dtype == want.dtype.newbyteorder("<")
                np.testing.assert_array_equal(got, want)


# -- reading a dangerous or unbatchable dtype through every entry point ---------------------------

LOADERS_CHILD = textwrap.dedent(r"""
    import json, subprocess, sys
    from neurocodec import (Dataset, RandomAccessWebDataset, ShardedDatasetInfo, WebDatasetLoader,
                            create_webdataset_dataloader)

    def dataset(p):
        with Dataset(p) as ds:
            return [repr(ds[i]) for i in range(len(ds))]  # touch every value, as a user would

    ENTRY = {
        "Dataset": dataset,
        "WebDatasetLoader": lambda p: list(WebDatasetLoader(p, buffer_size=4, seed=1)),
        "RandomAccessWebDataset": lambda p: [s for s in RandomAccessWebDataset(p)],
        "dataloader0": lambda p: list(create_webdataset_dataloader(p, batch_size=2, num_workers=0)),
        "dataloader2": lambda p: list(create_webdataset_dataloader(p, batch_size=2, num_workers=2, shuffle=False)),
        "info": lambda p: ShardedDatasetInfo(p).get_summary(),
    }
    report = {}
    for path in sys.argv[1:]:
        for name, read in ENTRY.items():
            print(json.dumps({"started": [path, name]}), flush=True)
            try:
                read(path)
                report[f"{path}|{name}"] = None
            except BaseException as exc:
                report[f"{path}|{name}"] = [type(exc).__name__, str(exc)[-1500:]]
    print(json.dumps({"report": report}), flush=True)
""")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dangerous_and_unbatchable_dtypes_through_every_entry_point(tmp_path):
    """`|O` (the SIGSEGV of defect 1) and the dtypes that reached collate (defect 6), in the
    manifest with matching payloads, or only in a payload's header: every reader entry point
    raises the library's error naming the field or member; `neurocodec verify` exits with an
    error, no signal and no traceback."""
    base = write_base(tmp_path / "base", samples=6, shard_size=3)
    cases = {}
    for spelling in ("|O", "|S8", "<M8[ns]", ">f4", "<f16", "<U4", "|V4"):
        root = h.copy_dataset(base, tmp_path / f"manifest{len(cases)}")
        for shard, sample in np.ndindex(2, 3):  # every sample, so that each reader meets one first
            h.replace_member(root, shard, sample, "lfp", payload=payload_for(spelling, LFP_SHAPE)[1])
        declare(root, "lfp", spelling)
        cases[str(root)] = ("DatasetError", r"field 'lfp' is not a dtype this format stores")
    for spelling in ("|O", ">f4"):
        root = h.copy_dataset(base, tmp_path / f"payload{len(cases)}")
        h.replace_member(root, 1, 1, "lfp", payload=payload_for(spelling, LFP_SHAPE)[1])
        cases[str(root)] = ("ShardError", r"member sample_000000005\.lfp\.npy: .*NPY dtype")
    proc = subprocess.run([sys.executable, "-c", LOADERS_CHILD, *cases], capture_output=True, text=True,
                          timeout=240, env=child_env())
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [line["started"] for line in lines if "started" in line]
    assert proc.returncode == 0, f"child died ({proc.returncode}) in {started[-1:]}: {proc.stderr[-2000:]}"
    report = lines[-1]["report"]
    for path, (error, match) in cases.items():
        for name in ("Dataset", "WebDatasetLoader", "RandomAccessWebDataset", "dataloader0", "dataloader2", "info"):
            got = report[f"{path}|{name}"]
            if name == "info" and error == "ShardError":
                assert got is None  # info reads the manifest only
                continue
            assert got is not None and got[0] == error and re.search(match, got[1]), (path, name, got)
        verify = subprocess.run([sys.executable, "-m", "neurocodec", "verify", path], capture_output=True,
                                text=True, timeout=120, env=child_env())
        assert verify.returncode > 0 and "Traceback" not in verify.stderr, (path, verify.returncode, verify.stderr)


# -- the documentation ----------------------------------------------------------------------------

def test_allowlist_is_the_one_the_format_documents():
    assert npy.DTYPES == ALLOWED


def test_format_doc_lists_exactly_the_allowlist():
    """docs/format.md's table of valid dtypes is npy.DTYPES, in order."""
    text = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    table = text.split("<!-- dtypes: begin -->")[1].split("<!-- dtypes: end -->")[0]
    listed = [name.replace("\\|", "|") for name in re.findall(r"^\| `([^`]+)` ", table, flags=re.M)]
    assert tuple(listed) == npy.DTYPES
    for name in listed:
        assert parse(name).str == name
