"""Property-based fuzzing of what the manifest declares, with shards and indexes forged to agree.

tests/test_fuzz_reader.py damages bytes and replaces manifest values one at a time; a forged
payload there fails its CRC-32 or header check and never reaches the decoders. Here each example
changes what the manifest *declares* - a field's dtype (every numpy dtype character and string
form: object, bytes, str, void, datetimes, StringDType, big-endian, float128, invalid strings),
its shape (other ranks, huge, negative, null), sample counts and first samples, byte sizes and
size limits, an index row's decoded size, the codec config - and forges the files to agree: the
field's payloads are rewritten as `.npy` whose header numpy itself writes for the declared dtype
and shape (the body pointer-like bytes, zeros or random), compressed as the dataset compresses,
with every index row, size and SHA-256 around them fixed up (tests/hostile.py).

The property: opening the dataset and reading every sample (by index, by iteration, then
`verify_all`) either gives back exactly what the forged files hold, in the declared dtype and
shape, or raises neurocodec's typed errors; never another exception, never a signal; and a dtype
the format does not store (not bool/integer/float/complex, wider than 64-bit floats, big-endian)
is never handed out. Reads run in a forked process under an address-space cap
(tests/isolated.py), so a segfault - an object array over forged pointers, issue 11 defect 1 -
fails one example, which hypothesis then shrinks, instead of killing pytest. The examples are
derandomized: CI runs the same ones every time, and they reach defect 1 by themselves.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import hostile as h
from isolated import ForkServer
from neurocodec import WebDatasetWriter

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(600)]

COMPRESSIONS = ("none", "zstd", "gz", "bz2", "xz")
SAMPLES = 3
ARRAY_FIELDS = ("eeg", "lfp", "spikes")  # variable shape; fixed; fixed with packed integers
KEEP = "<keep>"
READ_LIMIT = SAMPLES + 2
EXAMPLES = 300

OBJECTS = ("O", "|O", "object", "O8", "<O")
NON_NUMERIC = ("S8", "|S8", "U4", "<U4", "V8", "|V8", "M8[ns]", "<M8[ns]", "m8", "<m8[s]", "M", "m",
               "S", "U", "V", "S0", "T", "<f4,<i4", "(2,)f4")
WIDE_OR_SWAPPED = (">f4", ">i8", ">u2", ">c8", "f16", "c32", "g", "G", "float128", "complex256")
NUMERIC = ("?", "b1", "|b1", "bool", ">b1", ">i1", "b", "h", "i", "l", "q", "n", "p", "B", "H", "I", "L",
           "Q", "N", "P", "e", "f", "d", "F", "D", "f2", "<f2", "i1", "u1", "<i2", "<i4", "<i8", "<u2",
           "<u4", "<u8", "<f4", "<f8", "<c8", "<c16", "=f4", "f4", "f8", "c8", "c16", "i8", "u8",
           "float32", "int64")
WRITTEN = ("|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16")
INVALID = ("f3", "i16", "", "xyz", "<f4 ", "f4[ns]", None, 4, ["<f4"], {"descr": "<f4"})
SHAPES = ([2**31, 2**31], [2**63], [2**64 + 1], [-1, 8], [None, 8], [None], [], [0, 8], [2, 8, 1],
          [1, 2, 8], [16], [8, 2], [2, None], [None, None, None], None, "2,8", 5, {"0": 2})
HUGE = (0, 2**31, 2**32 + 7, 2**63 - 1, 2**63, 2**63 + 5, 2**64 - 1, 2**64, 2**64 + 5, 10**30, -1)


def make_samples() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Three samples: a variable-length array, a fixed one, packed integers, text, metadata."""
    rng = np.random.default_rng(11)
    return [({"eeg": rng.standard_normal((2, 3 + i)).astype("<f4"),
              "lfp": rng.standard_normal((2, 8)).astype("<f4"),
              "spikes": rng.poisson(2, (3, 5)), "note": f"trial {i}"}, {"trial": i})
            for i in range(SAMPLES)]


# -- the examples ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """One forged dataset: what the manifest declares for `field`, what its payloads hold, and
    the other manifest or index changes (`extras`)."""

    compression: str
    field: str
    dtype: Any
    shape: Any
    payload: str  # "agree" (declared dtype and shape), "stale" (unchanged), "other" (payload_dtype)
    payload_dtype: str
    fill: str
    seed: int
    delta: int  # bytes added to (or cut from) each forged body
    extras: tuple = ()


def extras() -> st.SearchStrategy:
    """Other changes: counts, sizes, an index row's decoded size, the codec config."""
    counts = st.tuples(st.just("count"), st.sampled_from(["samples", "first_sample", "consistent"]),
                       st.integers(0, 1), st.one_of(st.integers(0, 6), st.sampled_from(HUGE + (64, 65, 999_999_998))),
                       st.booleans())
    totals = st.tuples(st.just("total"), st.one_of(st.integers(0, 6), st.sampled_from(HUGE)))
    sizes = st.tuples(st.just("size"), st.sampled_from(["bytes", "index_bytes", "max_raw_bytes", "max_stored_bytes"]),
                      st.integers(0, 4), st.one_of(st.sampled_from([-512, -1, 1, 512]).map(lambda d: ("delta", d)),
                                                   st.sampled_from(HUGE).map(lambda v: ("value", v))))
    raw = st.tuples(st.just("raw"), st.integers(0, SAMPLES - 1), st.sampled_from(ARRAY_FIELDS + ("note",)),
                    st.sampled_from(HUGE + ("+1", "-1")), st.booleans())
    codec = st.tuples(st.just("codec"), st.sampled_from(ARRAY_FIELDS + ("note",)), st.one_of(
        st.sampled_from([True, False, 1, 0, "yes", None, 2**70]).map(lambda v: {"id": "npy", "pack_integers": v}),
        st.sampled_from(["json", "text", "bytes", "npy", "nosuch", ""]).map(lambda i: {"id": i}),
        st.just({"id": "npy", "pack_integers": True, "zzz": 1}), st.sampled_from(["npy", None, []])))
    return st.one_of(counts, totals, sizes, raw, codec)


@st.composite
def plans(draw) -> Plan:
    """A `Plan`. The declared dtype comes from one of eight families (one is object); a third of
    the plans change the shape, a third add `extras`, so most forgeries reach the decoders."""
    family = draw(st.sampled_from([(KEEP,), WRITTEN, WRITTEN, NUMERIC, OBJECTS, NON_NUMERIC, WIDE_OR_SWAPPED, INVALID]))
    dtype = draw(st.sampled_from(family))
    shape = draw(st.one_of(st.just(KEEP), st.lists(st.integers(0, 6), max_size=4),
                           st.lists(st.one_of(st.integers(-3, 2**64 + 5), st.none()), max_size=4),
                           st.sampled_from(SHAPES))) if draw(st.integers(0, 2)) == 0 else KEEP
    return Plan(
        compression=draw(st.sampled_from(COMPRESSIONS)), field=draw(st.sampled_from(ARRAY_FIELDS)),
        dtype=dtype, shape=shape, payload=draw(st.sampled_from(["agree", "agree", "agree", "stale", "other"])),
        payload_dtype=draw(st.sampled_from(OBJECTS + NON_NUMERIC[:12] + WIDE_OR_SWAPPED + NUMERIC)),
        fill=draw(st.sampled_from(["zeros", "0x41", "0xff", "random"])), seed=draw(st.integers(0, 2**32 - 1)),
        delta=draw(st.sampled_from([0, 0, 0, 0, -1, 1, -8, 8])),
        extras=tuple(draw(st.lists(extras(), min_size=1, max_size=2))) if draw(st.integers(0, 2)) == 0 else (),
    )


# -- forging a dataset from a plan ---------------------------------------------------------------

def parse_dtype(text: Any) -> np.dtype | None:
    """`text` as a numpy dtype, or None (the test's own strings only: never untrusted input)."""
    if not isinstance(text, str):
        return None
    try:
        return np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        return None


def refused(declared: Any) -> bool:
    """True for declared dtypes the format does not store (issue 11: object, strings, void,
    datetimes, StringDType, structured, sub-arrays, float128/complex256, big-endian)."""
    dt = parse_dtype(declared)
    if dt is None or dt.kind not in "biufc" or dt.fields or dt.subdtype is not None:
        return True
    return dt.itemsize > {"b": 1, "i": 8, "u": 8, "f": 8, "c": 16}[dt.kind] or dt.byteorder == ">"


def shape_matches(shape: tuple[int, ...], declared: Any) -> bool:
    """Whether an array shape fits a manifest shape (lengths, None for variable axes)."""
    return (isinstance(declared, list) and len(declared) == len(shape)
            and all(d is None or (type(d) is int and d == s) for d, s in zip(declared, shape)))


def expected_digest(value: np.ndarray | None, declared: Any, shape: Any) -> list | None:
    """What reading a member holding `value` may return under the declared dtype and shape
    (integers widen, as packed spikes do), or None: it must not be returned at all."""
    if value is None or refused(declared) or not shape_matches(value.shape, shape):
        return None
    want = np.dtype(declared)
    if value.dtype == want:
        return h.digest(value)
    if value.dtype.kind in "iu" and want.kind in "iu" and np.can_cast(value.dtype, want):
        return h.digest(value.astype(want))
    return None


def body(plan: Plan, size: int, sample: int) -> bytes:
    """`size` bytes of the plan's fill (pointer-like 0x41..., 0xff..., zeros or random)."""
    if plan.fill == "random":
        return np.random.default_rng([plan.seed, sample]).bytes(size)
    return {"zeros": b"\0", "0x41": b"\x41", "0xff": b"\xff"}[plan.fill] * size


def forge_payloads(plan: Plan, root: Path, original: dict) -> dict[int, np.ndarray | None]:
    """Rewrite the plan's field in every sample; return what each forged member honestly holds
    (None where no array of a storable dtype agrees with its bytes)."""
    doc = h.load_manifest(root)
    spec = next(f for f in doc["fields"] if f["name"] == plan.field)
    declared = spec["dtype"] if plan.dtype == KEEP else plan.dtype
    dt = parse_dtype(declared if plan.payload == "agree" else plan.payload_dtype) or np.dtype(spec["dtype"])
    shape = spec["shape"] if plan.shape == KEEP else plan.shape
    raws, values = {}, {}
    for i in range(SAMPLES):
        own = original[i][plan.field].shape
        if isinstance(shape, list) and len(shape) <= 32 and all(d is None or (type(d) is int and d >= 0) for d in shape):
            forged = tuple(own[k] if d is None and k < len(own) else (1 + i if d is None else d) for k, d in enumerate(shape))
        else:
            forged = own
        size = int(np.prod(forged, dtype=object)) * dt.itemsize
        data = body(plan, max(0, min(size, 1 << 20) + plan.delta), i)
        raws[i] = h.forged_npy(dt, forged, data)
        storable = len(data) == size and dt.kind in "biufc" and not dt.fields and dt.subdtype is None
        values[i] = np.frombuffer(data, dt).reshape(forged) if storable else None
    h.set_field_payloads(root, plan.field, raws, plan.compression)
    return values


def apply_extra(root: Path, extra: tuple) -> None:
    """Apply one of `extras()`'s changes (values read back must still be the originals)."""
    doc = h.load_manifest(root)
    kind = extra[0]
    if kind == "raw":
        _, sample, name, value, fit = extra
        shard, local = (0, sample) if sample < 2 else (1, sample - 2)
        rows = h.read_index(root, shard)
        col = h.field_column(root, name)
        real = int(rows[local, col, 2])
        value = {"+1": real + 1, "-1": max(real - 1, 0)}.get(value, value)
        if value < 0 or value >= 2**64:
            return
        rows[local, col, 2] = value
        h.write_index(root, shard, rows)
        if fit:
            doc = h.load_manifest(root)
            doc["fields"][col]["max_raw_bytes"] = max(doc["fields"][col]["max_raw_bytes"], value)
            h.save_manifest(root, doc)
        return
    if kind == "count":
        _, key, shard, value, resize = extra
        entry = doc["shards"][shard]
        if key == "consistent":
            entry["samples"] = value
            first = 0
            for e in doc["shards"]:
                e["first_sample"], first = first, first + e["samples"] if type(e["samples"]) is int else first
            doc["total_samples"] = first
            if resize and 0 <= value <= 70:
                rows = h.read_index(root, shard)
                rows = rows[:value] if value <= len(rows) else np.concatenate([rows] + [rows[-1:]] * (value - len(rows)))
                h.write_index(root, shard, rows)
                doc["shards"][shard].update({k: h.load_manifest(root)["shards"][shard][k] for k in ("index_bytes", "index_sha256")})
        else:
            entry[key] = value
    elif kind == "total":
        doc["total_samples"] = extra[1]
    elif kind == "size":
        _, key, where, (how, amount) = extra
        items = doc["shards"] if key in ("bytes", "index_bytes") else doc["fields"]
        item = items[where % len(items)]
        item[key] = item[key] + amount if how == "delta" else amount
    elif kind == "codec":
        _, name, codec = extra
        next(f for f in doc["fields"] if f["name"] == name)["codec"] = codec
    h.save_manifest(root, doc)


@dataclass
class Expect:
    """Per global sample, per field: the digest reading may return, or None (must not return)."""

    digests: list[dict[str, list | None]] = field(default_factory=list)


def forge(plan: Plan, base: Path, root: Path, original: list[dict]) -> Expect:
    """Build the plan's dataset at `root`; return what reading it may give back."""
    shutil.copytree(base, root)
    if plan.payload == "stale":
        values = {i: h.stored_array(base, i // 2, i % 2, plan.field, plan.compression) for i in range(SAMPLES)}
    else:
        values = forge_payloads(plan, root, original)
    expect = Expect()
    for extra in plan.extras:
        apply_extra(root, extra)
    doc = h.load_manifest(root)
    spec = next(f for f in doc["fields"] if f["name"] == plan.field)
    if plan.dtype != KEEP:
        spec["dtype"] = plan.dtype
    if plan.shape != KEEP:
        spec["shape"] = plan.shape
    h.save_manifest(root, doc)
    for i in range(SAMPLES):
        want = {name: h.digest(v) for name, v in original[i].items()}
        want[plan.field] = expected_digest(values[i], spec["dtype"], spec["shape"])
        expect.digests.append(want)
    return expect


# -- reading, in the forked process ------------------------------------------------------------------

def read_job(path: str, limit: int) -> dict[str, Any]:
    """Open `path`, read samples by index and by iteration, then verify_all; typed errors are
    recorded, anything else propagates (and fails the example)."""
    from neurocodec.errors import NeurocodecError
    from neurocodec.dataset.reader import Dataset

    def typed(exc: NeurocodecError) -> list:
        return ["error", type(exc).__name__, str(exc)[:300]]

    report: dict[str, Any] = {"open": None, "reads": [], "iterated": [], "iter_error": None, "verify": None}
    try:
        ds = Dataset(path)
    except NeurocodecError as exc:
        report["open"] = typed(exc)
        return report
    with ds:
        n = len(ds)
        for i in list(range(min(n, limit))) + ([n - 1] if n > limit else []):
            try:
                report["reads"].append([i, ["ok", h.digest_sample(ds[i])]])
            except NeurocodecError as exc:
                report["reads"].append([i, typed(exc)])
        try:
            for k, sample in enumerate(ds):
                if k >= limit:
                    break
                report["iterated"].append(h.digest_sample(sample))
        except NeurocodecError as exc:
            report["iter_error"] = typed(exc)
        try:
            report["verify"] = ["ok", ds.verify_all()]
        except NeurocodecError as exc:
            report["verify"] = typed(exc)
    return report


def warm() -> None:
    """The fork server's warm-up: load the plugins once, before any fork."""
    from neurocodec.plugin.manager import default_registry

    default_registry()


# -- the property ------------------------------------------------------------------------------------

def check_sample(i: int, got: dict[str, list], expect: Expect) -> None:
    """A returned sample is sample `i` of the forged files, field by field."""
    assert i < SAMPLES, f"index {i} returned a sample, but the files hold {SAMPLES}"
    want = expect.digests[i]
    assert got.get("__key__") == h.digest(f"sample_{i + 1:09d}"), (i, got.get("__key__"))
    assert set(got) == {"__key__", *want}, (i, sorted(got))
    for name, digest in want.items():
        assert digest is not None, f"sample {i} field {name!r} was returned ({got[name][:3]}) but its " \
                                   "dtype or bytes cannot honestly be read under the manifest"
        assert got[name] == digest, (i, name, got[name], digest)


def label(text: str) -> None:
    """Label the example for `--hypothesis-show-statistics` (what the forgeries reach)."""
    if currently_in_test_context():
        event(text)


def check_report(report: dict[str, Any], expect: Expect) -> None:
    """The property over one example's reads."""
    if report["open"]:
        label(f"open: {report['open'][1]}: {report['open'][2].split(': ', 1)[-1][:60]}")
        return
    for i, (status, *rest) in report["reads"]:
        label("read: ok" if status == "ok" else f"read: {rest[0]}: {rest[1].split(': ')[-1][:50]}")
        if status == "ok":
            check_sample(i, rest[0], expect)
    for i, got in enumerate(report["iterated"]):
        check_sample(i, got, expect)
    if report["verify"][0] == "ok":
        label("verified")
        assert report["verify"][1] == SAMPLES
        assert [r[1][0] for r in report["reads"]] == ["ok"] * SAMPLES
        assert len(report["iterated"]) == SAMPLES and report["iter_error"] is None


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """The valid dataset per compression (shards of 2 and 1 samples); read-only."""
    out = {}
    for compression in COMPRESSIONS:
        out[compression] = tmp_path_factory.mktemp("fuzz-manifest") / compression
        with WebDatasetWriter(out[compression], shard_size=2, compression=compression, fsync=False) as w:
            for fields, metadata in make_samples():
                w.write_sample(fields, metadata)
    return out


@pytest.fixture(scope="module")
def server():
    """The fork server the reads run in."""
    srv = ForkServer("numpy", "neurocodec.dataset.reader", "test_fuzz_manifest", warmup="test_fuzz_manifest:warm")
    yield srv
    srv.close()


def originals() -> list[dict[str, Any]]:
    """The valid samples as the reader returns them (metadata under its field name)."""
    return [{**fields, "metadata": metadata} for fields, metadata in make_samples()]


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=plans())
def test_forged_manifest_reads_exactly_or_fails_typed(bases, server, plan):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        expect = forge(plan, bases[plan.compression], root, originals())
        out = server.run("test_fuzz_manifest:read_job", path=str(root), limit=READ_LIMIT)
        assert not out.crashed, f"reading the forged dataset crashed: {out.explain()}"
        assert out.raised is None, f"a foreign exception escaped: {out.raised['type']}: " \
                                   f"{out.raised['message']}\n{out.raised['traceback']}"
        check_report(out.returned, expect)


def test_unforged_bases_read_exactly(bases, server):
    """Control: with nothing forged the property's exact branch is taken for every sample."""
    for compression, root in bases.items():
        out = server.run("test_fuzz_manifest:read_job", path=str(root), limit=READ_LIMIT)
        assert not out.crashed and out.raised is None, out.explain()
        expect = Expect([{name: h.digest(v) for name, v in o.items()} for o in originals()])
        check_report(out.returned, expect)
        assert out.returned["verify"] == ["ok", SAMPLES], compression


def test_stale_plan_with_nothing_changed_is_exact(bases, server, tmp_path):
    """Control for the forging: a plan that keeps every declaration and rewrites each payload
    with what numpy writes for it (`agree`, random bytes) reads back exactly those bytes."""
    plan = Plan("zstd", "lfp", KEEP, KEEP, "agree", "<f4", "random", 5, 0)
    expect = forge(plan, bases["zstd"], tmp_path / "ds", originals())
    assert all(d["lfp"] is not None for d in expect.digests)
    out = server.run("test_fuzz_manifest:read_job", path=str(tmp_path / "ds"), limit=READ_LIMIT)
    assert not out.crashed and out.raised is None, out.explain()
    check_report(out.returned, expect)
    assert out.returned["verify"] == ["ok", SAMPLES]
