"""Dataset locations: a local directory, or an fsspec URL (s3://, gs://, https://, memory://, ...).

Local paths (and `file://` URLs, which are turned into local paths) keep the plain-file code
path with no fsspec layer at all; anything else becomes a `Location`, which wraps an fsspec
filesystem, the dataset's root inside it, and the storage options it was opened with.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from neurocodec.errors import DatasetError
from neurocodec.process import PerProcess
from neurocodec.storage.http_timeouts import with_http_timeouts

# A scheme of two or more letters followed by "://" (one letter would be a Windows drive), or
# an fsspec chained URL such as "simplecache::s3://bucket/ds".
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]+://|[A-Za-z][A-Za-z0-9+.\-]*::)")


def is_url(path: Any) -> bool:
    """True if `path` is a URL string (`s3://...`, `file://...`), not a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def file_url_path(url: str) -> Path | None:
    """The local path of a `file://` URL (host empty or localhost), else None."""
    if not url.lower().startswith("file://"):
        return None
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parts.path))


def dataset_path(path: str | os.PathLike) -> Path | str:
    """A dataset location as the rest of neurocodec takes it: a `Path` for local directories
    (including `file://` URLs), the URL string (without trailing slashes) for anything else."""
    if not is_url(path):
        return Path(path)
    local = file_url_path(path)
    if local is not None:
        return local
    scheme, sep, rest = path.partition("://")
    return f"{scheme}{sep}{rest.rstrip('/')}" if rest.rstrip("/") else path


def is_remote(path: Path | str) -> bool:
    """True for a location from `dataset_path` that is a URL (read through the shard cache)."""
    return isinstance(path, str)


class Location:
    """A dataset root on an fsspec filesystem: `url`, `storage_options`, and per-process `fs`.

    The filesystem is created lazily in each process (after a fork, or after unpickling in a
    DataLoader worker) from the URL and options, so a `Location` pickles as those two only.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not is_url(url):
            raise ValueError(f"not a URL: {url!r}")
        self.url = str(dataset_path(url))
        self.storage_options = dict(storage_options or {})
        self._connection: PerProcess[tuple[Any, str]] = PerProcess()

    def _connect(self) -> tuple[Any, str]:
        import fsspec.core

        try:
            fs, root = fsspec.core.url_to_fs(self.url, **with_http_timeouts(self.url, self.storage_options))
        except ImportError as exc:
            raise DatasetError(f"{self.url}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{self.url}: cannot open with storage options "
                               f"{sorted(self.storage_options)}: {exc}") from None
        return fs, root.rstrip("/")

    @property
    def fs(self) -> Any:
        """This process's fsspec filesystem."""
        return self._connection.get(self._connect)[0]

    @property
    def root(self) -> str:
        """The dataset root as a path of `fs` (protocol stripped)."""
        return self._connection.get(self._connect)[1]

    @property
    def protocol(self) -> str:
        """The filesystem's main protocol name (`s3`, `gcs`, `https`, `memory`, ...)."""
        proto = self.fs.protocol
        return proto if isinstance(proto, str) else proto[0]

    def path(self, name: str) -> str:
        """The `fs` path of file `name` in the dataset."""
        return f"{self.root}/{name}" if self.root else name

    def url_of(self, name: str) -> str:
        """The URL of file `name` in the dataset (for messages)."""
        return f"{self.url}/{name}"

    def __repr__(self) -> str:
        return f"Location({self.url!r})"
