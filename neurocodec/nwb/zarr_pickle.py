"""Reading the object arrays of NWB-Zarr folders without running code from them.

hdmf-zarr stores references between NWB objects (an electrode's `group`, table regions) as
numpy object arrays of `hdmf_zarr.utils.ZarrReference` dicts through numcodecs' `Pickle` codec.
numcodecs refuses to unpickle by default, since unpickling can run any code the file names; so
real NWB-Zarr sessions fail to read unless that is switched off for the whole process.

`install()` registers `RestrictedPickle` as the process's "pickle" codec instead: it unpickles
only numpy arrays and dtypes (the array itself), `ZarrReference` and Python's plain values
(dicts, lists, strings, numbers), and refuses any other global with an error naming it, as
`torch.load(weights_only=True)` does for model files. Encoding is numcodecs' own.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numcodecs
import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray

ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.dtypes", "ObjectDType"), ("hdmf_zarr.utils", "ZarrReference"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickled object array names a global outside `ALLOWED`; nothing of it was run."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(f"an object array names {module}.{name}, which neurocodec does not "
                                    "unpickle (only numpy arrays and hdmf-zarr references)")
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    """`pickle.loads` limited to `ALLOWED` globals."""
    return _Unpickler(io.BytesIO(data)).load()


class RestrictedPickle(numcodecs.Pickle):
    """numcodecs' Pickle codec whose `decode` unpickles only `ALLOWED` globals."""

    codec_id = "pickle"

    def decode(self, buf: Any, out: Any = None) -> Any:
        decoded = restricted_loads(ensure_contiguous_ndarray(buf).tobytes())
        if out is not None:
            np.copyto(out, decoded)
            return out
        return decoded


def install() -> None:
    """Make `RestrictedPickle` the process's "pickle" codec (idempotent)."""
    numcodecs.register_codec(RestrictedPickle, codec_id="pickle")
