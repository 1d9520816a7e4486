"""Building hostile variants of a valid dataset, for the reader's safety tests.

A hostile shard is only useful if it reaches the check it targets: a forged member whose CRC-32
is stale is stopped by the CRC check and never tests the header parser. So the helpers here
rewrite a member's header or payload and then recompute everything *around* it that the test
does not target: the index rows (offsets, sizes, CRC-32), the index's size and SHA-256 in the
manifest, the shard's size and SHA-256, and the field's size limits. Each helper takes flags to
leave one of those stale on purpose.

Everything is implemented independently of `neurocodec.format` (own USTAR builder, `numpy.save`
for the index) so that a bug there cannot hide itself in the corpus. The decompression bombs are
genuine single streams of each format, assembled block by block so that building a 4 GiB bomb
takes well under a second instead of compressing 4 GiB.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import lzma
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

MANIFEST = ".neurocodec/dataset_metadata.json"  # where writers put it (docs/format.md, section 2)
BLOCK = 512
GiB = 1 << 30


# -- the manifest and the index ---------------------------------------------------------------

def load_manifest(root: Path) -> dict[str, Any]:
    """The parsed manifest of the dataset at `root`."""
    return json.loads((root / MANIFEST).read_text())


def save_manifest(root: Path, doc: Any) -> None:
    """Write `doc` as the manifest of `root` (any JSON value, valid or not)."""
    (root / MANIFEST).write_text(json.dumps(doc, indent=1))


def edit_manifest(root: Path, **changes: Any) -> dict[str, Any]:
    """Set top-level manifest keys; return the new document."""
    doc = load_manifest(root)
    doc.update(changes)
    save_manifest(root, doc)
    return doc


def shard_file(root: Path, shard: int) -> Path:
    """Path of shard number `shard`."""
    return root / load_manifest(root)["shards"][shard]["name"]


def index_file(root: Path, shard: int) -> Path:
    """Path of shard number `shard`'s index."""
    return root / load_manifest(root)["shards"][shard]["index"]


def field_column(root: Path, field: str) -> int:
    """Column of `field` in the index (the manifest's field order)."""
    return [f["name"] for f in load_manifest(root)["fields"]].index(field)


def read_index(root: Path, shard: int) -> np.ndarray:
    """The index rows of `shard` (samples, fields, 4) as a writable uint64 array."""
    return np.load(index_file(root, shard), allow_pickle=False).astype(np.uint64)


def npy_bytes(array: np.ndarray, **save_options: Any) -> bytes:
    """`array` as `.npy` bytes written by numpy itself."""
    out = io.BytesIO()
    np.save(out, array, **save_options)
    return out.getvalue()


def write_index_bytes(root: Path, shard: int, data: bytes, *, fix_manifest: bool = True) -> None:
    """Replace `shard`'s index file; by default record its new size and SHA-256 in the manifest."""
    index_file(root, shard).write_bytes(data)
    if fix_manifest:
        fix_index_entry(root, shard)


def write_index(root: Path, shard: int, rows: np.ndarray, *, fix_manifest: bool = True) -> None:
    """Replace `shard`'s index with `rows` (stored as little-endian uint64)."""
    write_index_bytes(root, shard, npy_bytes(np.asarray(rows, dtype="<u8")), fix_manifest=fix_manifest)


def fix_index_entry(root: Path, shard: int) -> None:
    """Record the index file's current size and SHA-256 in the manifest."""
    doc = load_manifest(root)
    data = (root / doc["shards"][shard]["index"]).read_bytes()
    doc["shards"][shard].update(index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest())
    save_manifest(root, doc)


def fix_shard_entry(root: Path, shard: int) -> None:
    """Record the shard file's current size and SHA-256 in the manifest."""
    doc = load_manifest(root)
    data = (root / doc["shards"][shard]["name"]).read_bytes()
    doc["shards"][shard].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    save_manifest(root, doc)


# -- tar members ------------------------------------------------------------------------------

def header_checksum(block: bytes | bytearray) -> int:
    """The USTAR checksum of a header (its checksum field counted as spaces)."""
    return sum(block[:148]) + 8 * ord(" ") + sum(block[156:BLOCK])


def with_checksum(block: bytes | bytearray) -> bytes:
    """`block` with a correct checksum field."""
    block = bytearray(block)
    block[148:156] = b"%06o\0 " % header_checksum(block)
    return bytes(block)


def ustar_header(name: str | bytes, size: int, *, typeflag: bytes = b"0", linkname: bytes = b"",
                 prefix: bytes = b"", magic: bytes = b"ustar\x0000", size_field: bytes | None = None,
                 fix_checksum: bool = True) -> bytes:
    """A 512-byte header. `size_field` replaces the 12-byte size field verbatim."""
    raw = name.encode() if isinstance(name, str) else name
    block = bytearray(BLOCK)
    block[0:len(raw)] = raw
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:157 + len(linkname)] = linkname
    block[257:265] = magic
    block[345:345 + len(prefix)] = prefix
    return with_checksum(block) if fix_checksum else bytes(block)


def set_header_field(block: bytes, start: int, value: bytes, *, fix_checksum: bool = True) -> bytes:
    """`block` with `value` written at `start` (and its checksum recomputed unless told not to)."""
    out = bytearray(block)
    out[start:start + len(value)] = value
    return with_checksum(out) if fix_checksum else bytes(out)


def header_name(block: bytes) -> str:
    """The name field of a header, up to its NUL."""
    return block[:100].split(b"\0", 1)[0].decode("ascii", "replace")


@dataclass
class Member:
    """One tar member as the index sees it: header, stored payload, declared decoded size."""

    header: bytes
    payload: bytes
    raw: int

    @property
    def name(self) -> str:
        """The header's name field."""
        return header_name(self.header)


def read_members(root: Path, shard: int) -> list[Member]:
    """The members of a (still valid) shard in file order, located through its index."""
    data = shard_file(root, shard).read_bytes()
    members = []
    for offset, stored, raw, _crc in read_index(root, shard).reshape(-1, 4).tolist():
        members.append(Member(data[offset - BLOCK:offset], data[offset:offset + stored], raw))
    return members


def member_position(root: Path, shard: int, sample: int, field: str) -> int:
    """Position of member (`sample`, `field`) of `shard` in `read_members` order."""
    fields = len(load_manifest(root)["fields"])
    return sample * fields + field_column(root, field)


def write_members(root: Path, shard: int, members: list[Member], *, crc: bool = True,
                  fix_index: bool = True, fix_manifest: bool = True, fit_limits: bool = True,
                  trailer: bytes = b"\0" * (2 * BLOCK)) -> None:
    """Rebuild `shard` from `members` and make everything around them consistent.

    The file is laid out exactly as the format does (header, payload, zero padding to 512,
    two zero blocks at the end). Then, unless switched off: the index gets each member's
    payload offset, stored size, declared raw size and CRC-32 (`crc=False` keeps the old CRC
    column); the manifest gets the shard's and index's new sizes and SHA-256; and each field's
    `max_raw_bytes` / `max_stored_bytes` grows to admit the new sizes (`fit_limits`), so that
    the index's size limits are not what stops the member.
    """
    out = bytearray()
    rows = []
    for m in members:
        out += m.header
        rows.append((len(out), len(m.payload), m.raw, zlib.crc32(m.payload)))
        out += m.payload + b"\0" * (-len(m.payload) % BLOCK)
    out += trailer
    shard_file(root, shard).write_bytes(bytes(out))
    doc = load_manifest(root)
    fields = len(doc["fields"])
    if fix_index:
        old = read_index(root, shard)
        new = np.array(rows, dtype=np.uint64).reshape(-1, fields, 4)
        if not crc and new.shape == old.shape:
            new[:, :, 3] = old[:, :, 3]
        write_index(root, shard, new, fix_manifest=False)
    if fit_limits:
        for position, m in enumerate(members):
            spec = doc["fields"][position % fields]
            spec["max_raw_bytes"] = max(spec["max_raw_bytes"], m.raw)
            spec["max_stored_bytes"] = max(spec["max_stored_bytes"], len(m.payload))
        save_manifest(root, doc)
    if fix_manifest:
        fix_shard_entry(root, shard)
        if fix_index:
            fix_index_entry(root, shard)


def replace_member(root: Path, shard: int, sample: int, field: str, *, header: bytes | None = None,
                   payload: bytes | None = None, raw: int | None = None, **options: Any) -> Member:
    """Swap one member's header and/or stored payload, then `write_members` (same options).

    Without `header`, a correct header for the new payload is built under the member's name.
    Returns the member as written.
    """
    members = read_members(root, shard)
    position = member_position(root, shard, sample, field)
    old = members[position]
    new_payload = old.payload if payload is None else payload
    new = Member(
        header=header if header is not None else ustar_header(old.name, len(new_payload)),
        payload=new_payload,
        raw=len(new_payload) if raw is None and payload is not None else (old.raw if raw is None else raw),
    )
    members[position] = new
    write_members(root, shard, members, **options)
    return new


def payload_offset(root: Path, shard: int, sample: int, field: str) -> int:
    """Offset of one member's payload in the shard file (from the index)."""
    return int(read_index(root, shard)[sample, field_column(root, field), 0])


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of a file in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset directory to mutate."""
    shutil.copytree(src, dst)
    return dst


# -- compression --------------------------------------------------------------------------------

def compress(name: str, data: bytes) -> bytes:
    """`data` compressed as the format stores a member payload under compression `name`."""
    if name == "none":
        return data
    if name == "zstd":
        return zstandard.ZstdCompressor(write_content_size=True).compress(data)
    if name == "gz":
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if name == "bz2":
        return bz2.compress(data)
    if name == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    raise ValueError(name)


def decompress(name: str, payload: bytes) -> bytes:
    """The inverse of `compress`, with the standard libraries (for payloads known to be valid)."""
    if name == "none":
        return payload
    if name == "zstd":
        return zstandard.ZstdDecompressor().decompress(payload)
    if name == "gz":
        return zlib.decompress(payload, 31)
    return {"bz2": bz2.decompress, "xz": lzma.decompress}[name](payload)


def zstd_rle_frame(total: int, *, declared: int | None, byte: int = 0) -> bytes:
    """A zstd frame of `total` copies of `byte` made of 128 KiB RLE blocks (4 bytes per block).

    `declared` is the content size the frame header states (None: not stated). It need not be
    `total`: that is how a frame lies about its size.
    """
    assert total > 0
    fcs = b"" if declared is None else struct.pack("<Q", declared)
    # Frame header descriptor: FCS field of 8 bytes when declared, no single-segment flag (so
    # a window descriptor follows), no dictionary; window 2**17 bytes admits 128 KiB blocks.
    fhd = 0xC0 if declared is not None else 0
    out = bytearray(struct.pack("<I", 0xFD2FB528) + bytes([fhd, 7 << 3]) + fcs)
    step = 1 << 17
    left = total
    while left:
        size = min(step, left)
        left -= size
        out += (int(left == 0) | (1 << 1) | (size << 3)).to_bytes(3, "little") + bytes([byte])
    return bytes(out)


def gzip_bomb(total: int, chunk: int = 64 << 20) -> bytes:
    """One gzip member inflating to `total` zero bytes (`total` a multiple of `chunk`).

    A full flush makes a deflate segment independent of what came before, so one compressed
    segment of `chunk` zeros is repeated; the trailer carries the true CRC-32 and size.
    """
    count, rest = divmod(total, chunk)
    assert rest == 0 and count > 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    final_empty_block = b"\x03\x00"
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + segment * count + final_empty_block
            + struct.pack("<II", crc, total & 0xFFFFFFFF))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def xz_bomb(total: int, chunk: int = 64 << 20) -> bytes:
    """One xz stream inflating to `total` zero bytes: one compressed block repeated.

    xz blocks are independent; the stream index lists every block (unpadded and uncompressed
    sizes) and the footer points back at it, both with their CRC-32s.
    """
    count, rest = divmod(total, chunk)
    assert rest == 0 and count > 0
    one = lzma.compress(bytes(chunk), format=lzma.FORMAT_XZ, preset=0)
    header, footer = one[:12], one[-12:]
    backward = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
    index = one[-12 - backward:-12]
    block = one[12:-12 - backward]
    records, pos = _read_varint(index, 1)
    assert index[0] == 0 and records == 1
    unpadded, pos = _read_varint(index, pos)
    uncompressed, pos = _read_varint(index, pos)
    assert uncompressed == chunk
    new_index = b"\0" + _varint(count) + (_varint(unpadded) + _varint(uncompressed)) * count
    new_index += b"\0" * (-len(new_index) % 4)
    new_index += struct.pack("<I", zlib.crc32(new_index))
    flags = header[6:8]
    size_field = struct.pack("<I", len(new_index) // 4 - 1)
    new_footer = struct.pack("<I", zlib.crc32(size_field + flags)) + size_field + flags + b"YZ"
    return header + block * count + new_index + new_footer


_BZ2_EOS = format(0x177245385090, "048b")


def bz2_bomb(total: int, chunk: int = 32 << 20) -> bytes:
    """One bzip2 stream inflating to `total` zero bytes: one compressed block repeated.

    bzip2 blocks are independent but bit-aligned, so the stream is spliced as a bit string; the
    end-of-stream trailer gets the combined CRC of all the blocks.
    """
    count, rest = divmod(total, chunk)
    assert rest == 0 and count > 0
    one = bz2.compress(bytes(chunk), 9)
    bits = format(int.from_bytes(one, "big"), f"0{len(one) * 8}b")
    for pad in range(8):
        eos = len(bits) - pad - 80
        if bits[eos:eos + 48] == _BZ2_EOS:
            break
    else:
        raise AssertionError("no bzip2 end-of-stream marker")
    block = bits[32:eos]
    assert block[:48] == format(0x314159265359, "048b"), "more than one block per chunk"
    block_crc = int(block[48:80], 2)
    combined = 0
    for _ in range(count):
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ block_crc
    out = bits[:32] + block * count + _BZ2_EOS + format(combined, "032b")
    out += "0" * (-len(out) % 8)
    return int(out, 2).to_bytes(len(out) // 8, "big")


def bomb(name: str, total: int, **options: Any) -> bytes:
    """A single-stream payload of compression `name` inflating to `total` zero bytes."""
    if name == "zstd":
        return zstd_rle_frame(total, declared=total)
    return {"gz": gzip_bomb, "bz2": bz2_bomb, "xz": xz_bomb}[name](total, **options)


# -- structural forgeries: payloads of any declared dtype and shape, and value fingerprints ----------

def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The NPY 1.0 header numpy itself writes for an array of `dtype` and `shape`.

    Any dtype is allowed (object, strings, datetimes, StringDType...), so that a forged payload
    agrees byte for byte with what a reader expects for a forged manifest dtype. StringDType
    has no portable descr; its `dtype.str` is what a reader comparing headers would build.
    """
    dtype = np.dtype(dtype)
    descr = dtype.str if dtype.kind == "T" else np.lib.format.dtype_to_descr(dtype)
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()


def forged_npy(dtype: np.dtype, shape: tuple[int, ...], body: bytes) -> bytes:
    """A payload claiming `dtype` and `shape` (numpy's header) followed by `body` verbatim."""
    return npy_header(dtype, shape) + body


def set_field_payloads(root: Path, field: str, raws: dict[int, bytes], compression: str) -> None:
    """Replace the `field` member of the samples in `raws` (global index -> decoded bytes),
    compressed as the dataset compresses, with everything around them made consistent
    (headers, index rows, limits, sizes and SHA-256s; see `write_members`)."""
    doc = load_manifest(root)
    for shard, entry in enumerate(doc["shards"]):
        first, count = entry["first_sample"], entry["samples"]
        mine = {i - first: raw for i, raw in raws.items() if first <= i < first + count}
        if not mine:
            continue
        members = read_members(root, shard)
        for local, raw in mine.items():
            position = member_position(root, shard, local, field)
            payload = compress(compression, raw)
            members[position] = Member(ustar_header(members[position].name, len(payload)), payload, len(raw))
        write_members(root, shard, members)


def stored_array(root: Path, shard: int, local: int, field: str, compression: str) -> np.ndarray:
    """The array a (valid) `.npy` member holds as stored (packed dtype included), read by numpy."""
    m = read_members(root, shard)[member_position(root, shard, local, field)]
    return np.load(io.BytesIO(decompress(compression, m.payload)), allow_pickle=False)


def digest(value: Any) -> list:
    """A JSON-comparable fingerprint of one decoded value.

    Arrays (and torch tensors, through `.numpy()`) by dtype, shape and SHA-256 of their bytes;
    other values by their sorted JSON text, or their repr. Every element of an array is
    touched first (`tolist`, flat; `repr` of a large one), as a user's code would: an object array
    over forged pointers crashes here, in the process that read it.
    """
    if type(value).__module__.startswith("torch"):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        value.reshape(-1).tolist() if value.size <= 1 << 16 else repr(value)
        data = np.ascontiguousarray(value).tobytes()
        return ["array", value.dtype.str, list(value.shape), hashlib.sha256(data).hexdigest()]
    try:
        return ["value", type(value).__name__, json.dumps(value, sort_keys=True)]
    except (TypeError, ValueError):
        return ["value", type(value).__name__, repr(value)]


def digest_sample(sample: dict[str, Any]) -> dict[str, list]:
    """`digest` of every field of a sample (`__key__` included)."""
    return {name: digest(value) for name, value in sample.items()}
