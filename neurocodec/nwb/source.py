"""NWB inputs: a local HDF5 file, a local NWB-Zarr folder, or an HDF5 file at a URL read in place.

`NWBSource.of(given, storage_options)` takes what a user names as input (a path, a `file://`
URL, or any fsspec URL) and knows how to check it, fingerprint its version and open it:

* **A local file** is opened with pynwb's `NWBHDF5IO`. Its version: absolute path, size and
  modification time (`{"path", "size", "mtime_ns"}`).
* **A local NWB-Zarr folder** (written by hdmf-zarr, as the Allen Institute publishes) is
  recognised by the Zarr metadata at its top (`.zgroup` for Zarr v2, `zarr.json` for v3), not by
  its name, and opened with `hdmf_zarr.nwb.NWBZarrIO` (the optional extra: `pip install
  'neurocodec[zarr]'`). Its version: absolute path, number of files, their total size and the
  newest modification time among them (`{"path", "format": "zarr", "files", "size",
  "mtime_ns"}`): one `stat` per file and no reads, so it is cheap even for folders of many
  chunks, and like a file's it misses only a rewrite keeping every size within one mtime tick.
* **A URL** (`s3://bucket/sub-x/ses-y.nwb`, `https://...`, `gs://...`; any fsspec protocol,
  opened with `storage_options`) is read in place: h5py reads the HDF5 file through a Python
  file object over fsspec's random-access file, which fetches `BLOCK_SIZE` byte ranges on demand
  and keeps the last `MAX_BLOCKS` of them in memory (a local block cache), so only the blocks
  holding what is read (the file's metadata and the arrays of the requested modalities) are
  ever downloaded. Every read is retried on transient errors with `RetryPolicy.default()`
  (`$NEUROCODEC_RETRY_*`); a read that fails for good raises `NWBError` naming the URL. Its
  version: URL, size and ETag (`{"url", "size", "etag"}`, Last-Modified when there is no ETag;
  a URL with neither is never taken as unchanged).

Why h5py's file-object support over fsspec rather than remfile: fsspec opens every protocol with
the same storage options as the rest of neurocodec (credentials, `endpoint_url`, `anon`, ...),
while remfile reads plain http(s) URLs only (S3 objects would need presigned or public URLs);
and one `RetryPolicy` decides what is transient for every read, as for shard downloads.

An `NWBSource` pickles as its location and storage options only: worker processes open the
file themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import attrs

from neurocodec.nwb.extract import NWBError
from neurocodec.storage.http_timeouts import with_http_timeouts
from neurocodec.storage.location import file_url_path, is_url
from neurocodec.storage.retry import RetriesExhausted, RetryPolicy

ZARR_MARKERS = (".zgroup", "zarr.json")
BLOCK_SIZE = 2**20
"""Bytes fetched by one range request when reading a file at a URL."""
MAX_BLOCKS = 64
"""Blocks kept in memory per open remote file (64 MiB)."""
ZARR_HINT = "pip install 'neurocodec[zarr]'"
CUT_SHORT = frozenset({"ClientPayloadError", "IncompleteRead", "IncompleteReadError", "ResponseStreamingError",
                       "ProtocolError"})
"""Exceptions (by class name, their libraries being optional) of an answer whose body broke off:
transient, whatever status they carry."""


@attrs.frozen
class URLPath:
    """A URL standing where extractors and messages expect a file's path: `str()` is the URL,
    `name`, `stem` and `suffix` are those of its last segment. It is never a local file: using
    it as one (`open`, `Path(...)`) raises ValueError instead of mangling `scheme://`."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The URL's last path segment, unquoted."""
        return posixpath.basename(unquote(urlsplit(self.url).path.rstrip("/"))) or self.url

    @property
    def stem(self) -> str:
        """`name` without its last suffix."""
        return Path(self.name).stem

    @property
    def suffix(self) -> str:
        """The last suffix of `name` (`.nwb`)."""
        return Path(self.name).suffix

    @property
    def parent(self) -> "URLPath":
        """The URL of the folder holding this one."""
        return URLPath(self.url.rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> "URLPath":
        return URLPath(f"{self.url}/{name}")

    def resolve(self) -> "URLPath":
        """The URL itself (already absolute)."""
        return self

    def exists(self) -> bool:
        """False: a URL is no local file."""
        return False

    def __fspath__(self) -> str:
        raise ValueError(f"{self.url} is a URL, not a local file (NWB files are read from URLs, "
                         "other inputs must be local)")


@attrs.frozen
class NWBSource:
    """One NWB input: `location` (a local path as given, or a URL) and the fsspec
    `storage_options` a URL is opened with (not part of equality or hashing)."""

    location: str
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, eq=False, repr=False)

    @classmethod
    def of(cls, given: "str | os.PathLike | URLPath | NWBSource",
           storage_options: Mapping[str, Any] | None = None) -> "NWBSource":
        """The source named by `given`; `storage_options` apply to URLs (a given NWBSource keeps its own)."""
        if isinstance(given, NWBSource):
            return given
        if isinstance(given, URLPath):
            given = given.url
        if isinstance(given, str) and is_url(given):
            local = file_url_path(given)
            if local is None:
                return cls(given, storage_options or {})
            given = local
        return cls(str(Path(given)))

    @property
    def is_remote(self) -> bool:
        """True for a URL read through fsspec."""
        return is_url(self.location)

    @property
    def path(self) -> Path | URLPath:
        """What extractors and messages see as the file's path: a `Path`, or a `URLPath`."""
        return URLPath(self.location) if self.is_remote else Path(self.location)

    def __str__(self) -> str:
        return self.location

    def is_zarr(self) -> bool:
        """True for a local directory holding Zarr metadata at its top."""
        path = Path(self.location)
        return not self.is_remote and path.is_dir() and any((path / m).is_file() for m in ZARR_MARKERS)

    def fingerprint(self) -> dict[str, Any]:
        """The source's version (see the module documentation); FileNotFoundError naming it
        when it does not exist, NWBError when it is no file (a URL naming a folder, a local
        folder without Zarr metadata)."""
        if self.is_remote:
            return _remote_fingerprint(self)
        path = Path(self.location)
        if path.is_dir():
            if not self.is_zarr():
                raise NWBError(f"{path}: is a directory, neither an NWB file nor an NWB-Zarr folder "
                               f"(no {' or '.join(ZARR_MARKERS)} in it)")
            return _zarr_fingerprint(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def version(self) -> "SourceVersion":
        """This source with its version now (`fingerprint()`)."""
        return SourceVersion(self, self.fingerprint())

    @contextlib.contextmanager
    def open(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(the NWBFile, read lazily from this source; the source's `fingerprint()` as opened),
        closed on exit. Opening errors are NWBError naming the source; with a URL, an error in
        the body after a read failed for good becomes NWBError naming the URL and the read."""
        if self.is_remote:
            with _open_remote(self) as opened:
                yield opened
            return
        fingerprint = self.fingerprint()
        if self.is_zarr():
            opener = _zarr_io(self.path)
        else:
            from pynwb import NWBHDF5IO

            def opener():
                return NWBHDF5IO(self.location, "r", load_namespaces=True)
        with _read(self.path, opener) as nwbfile:
            yield nwbfile, fingerprint


@attrs.frozen
class SourceVersion:
    """A source and its version (`NWBSource.fingerprint()`) when a conversion was planned: a
    worker converts `source` and records `record` as what it converted (picklable)."""

    source: NWBSource
    record: Mapping[str, Any] = attrs.field(eq=False)


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the frames `exc` (and its causes) went through.

    h5py reading a Python file object keeps that object referenced from an HDF5 property list
    held by h5py's frames; left to the exception's traceback, the list may be freed only when
    the interpreter shuts down, and HDF5 then calls into a finalized Python: a segmentation
    fault at exit. Clearing the frames frees it now.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


@contextlib.contextmanager
def _read(path: Path | URLPath, opener: Callable[[], Any]) -> Iterator[Any]:
    """`opener()`'s IO, read into an NWBFile; errors of either step as NWBError naming `path`."""
    try:
        nwb_io = opener()
    except Exception as exc:
        release_frames(exc)
        raise NWBError(f"{path}: cannot open as NWB ({type(exc).__name__}: {exc})") from None
    with nwb_io:
        try:
            nwbfile = nwb_io.read()
        except Exception as exc:
            raise NWBError(f"{path}: cannot read as NWB ({type(exc).__name__}: {exc})") from None
        yield nwbfile


def _zarr_io(path: Path | URLPath) -> Callable[[], Any]:
    """An opener of the NWB-Zarr folder `path`; NWBError with the install hint without hdmf-zarr."""
    try:
        from hdmf_zarr.nwb import NWBZarrIO
    except ImportError:
        raise NWBError(f"{path}: is an NWB-Zarr folder, and reading one needs hdmf-zarr: {ZARR_HINT}") from None
    from neurocodec.nwb import zarr_pickle

    zarr_pickle.install()  # its references are pickled: read them without running code from the file
    return lambda: NWBZarrIO(str(path), mode="r")


def _zarr_fingerprint(path: Path) -> dict[str, Any]:
    files = size = newest = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"path": str(path.resolve()), "format": "zarr", "files": files, "size": size, "mtime_ns": newest}


# -- files at URLs ------------------------------------------------------------------------------

def _filesystem(source: NWBSource) -> tuple[Any, str]:
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(source.location, **with_http_timeouts(source.location, source.storage_options))
    except ImportError as exc:
        raise NWBError(f"{source}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise NWBError(f"{source}: cannot open with storage options {sorted(source.storage_options)}: "
                       f"{exc}") from None


def _info(source: NWBSource) -> tuple[Any, str, dict[str, Any]]:
    """(filesystem, path in it, fsspec info of the file), retried on transient errors."""
    fs, path = _filesystem(source)

    def info() -> dict[str, Any]:
        fs.invalidate_cache(path)
        return fs.info(path)

    try:
        details = RetryPolicy.default().call(info, f"{source}: looking up the file")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {source}") from None
    except RetriesExhausted as exc:
        raise NWBError(str(exc)) from None
    if details.get("type") == "directory":
        raise NWBError(f"{source}: is a folder; NWB-Zarr folders are read from local disk only "
                       "(NWB files in HDF5 at URLs are read in place)")
    if not isinstance(details.get("size"), int):
        raise NWBError(f"{source}: the server does not say the file's size, so it cannot be read in place")
    return fs, path, details


def _remote_fingerprint(source: NWBSource, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    details = details or _info(source)[2]
    etag = details.get("ETag") or details.get("etag")
    fingerprint = {"url": source.location, "size": details["size"], "etag": etag}
    if etag is None:
        modified = details.get("LastModified") or details.get("Last-Modified") or details.get("mtime")
        fingerprint["last_modified"] = None if modified is None else str(modified)
    return fingerprint


def identifies_version(fingerprint: Mapping[str, Any]) -> bool:
    """False for a URL's fingerprint holding neither ETag nor Last-Modified (a part converted
    from it can never be known to be current)."""
    return "url" not in fingerprint or bool(fingerprint.get("etag") or fingerprint.get("last_modified"))


@contextlib.contextmanager
def _open_remote(source: NWBSource) -> Iterator[tuple[Any, dict[str, Any]]]:
    import h5py
    from pynwb import NWBHDF5IO

    fs, path, details = _info(source)
    try:
        raw = fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="blockcache",
                      cache_options={"maxblocks": MAX_BLOCKS})
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {source}") from None
    except Exception as exc:
        raise NWBError(f"{source}: cannot open ({type(exc).__name__}: {exc})") from None
    reader = RetryingReader(raw, details["size"], str(source), RetryPolicy.default())
    with contextlib.ExitStack() as stack:
        stack.callback(raw.close)
        try:
            with _read(source.path, lambda: NWBHDF5IO(file=stack.enter_context(h5py.File(reader, "r")),
                                                      mode="r", load_namespaces=True)) as nwbfile:
                yield nwbfile, _remote_fingerprint(source, details)
        except Exception as exc:
            release_frames(exc)
            if reader.failure is None:
                raise
            failure = reader.failure
            if not isinstance(failure, RetriesExhausted):
                failure = f"reading failed for good ({type(failure).__name__}: {failure})"
            raise NWBError(f"{source}: {failure}") from exc


class RetryingReader(io.RawIOBase):
    """A read-only, seekable file over fsspec file `raw` of `size` bytes whose every read is
    retried on transient errors by `policy` (a short read before the end counts as one). The
    first read that fails for good is kept in `failure` and raised."""

    def __init__(self, raw: Any, size: int, name: str, policy: RetryPolicy) -> None:
        super().__init__()
        self.raw, self.size, self.name, self.policy = raw, size, name, policy
        self.failure: BaseException | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        if want == 0:
            return 0
        at = self._pos
        try:
            data = self.policy.call(lambda: self._read(at, want), f"reading bytes {at}-{at + want - 1}")
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            raise
        view[:want] = data
        self._pos = at + want
        return want

    def _read(self, at: int, want: int) -> bytes:
        try:
            self.raw.seek(at)
            data = self.raw.read(want)
        except Exception as exc:
            if type(exc).__name__ not in CUT_SHORT:
                raise
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if len(data) == want:
                return data
            problem = f"short read: {len(data)} of {want} bytes"
        # Raised outside the handler, without the original in its chain: aiohttp's payload error
        # carries a parser code (400) that would read as an HTTP status, and make it permanent.
        raise ConnectionError(f"answer cut short at byte {at} ({problem})")

