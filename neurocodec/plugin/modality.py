"""Modality specs: what a plugin declares about one kind of neural data.

A `ModalitySpec` names the modality, the codec (by config) that stores it, the policy that turns
a user's value into the array actually stored (dtype and shape rules), and the collate rule that
batches it. Plugins register specs through the `neurocodec_register_modalities` hook.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.plugin.collate import CollateRule, collate_arrays

Prepare = Callable[[Any, Mapping[str, Any]], Any]
"""Turns one user value into the value the codec stores, given the field's options.

Raises ValueError (or TypeError) with a message that says what is wrong with the value; the
writer adds the sample and field.
"""


@attrs.frozen(slots=True)
class ModalitySpec:
    """One modality a plugin provides.

    `codec` is the config (`{"id": ..., **params}`) of a registered codec. `prepare` applies the
    dtype and shape policy. `collate` batches decoded values. `options` documents the options a
    user may pass for this modality (`modality_options={"lfp": {"dtype": "float16"}}`).
    A spec with `fallback=True` is not chosen by name but for any unregistered field name whose
    value `accepts`.
    """

    name: str
    codec: Mapping[str, Any]
    prepare: Prepare
    collate: CollateRule = collate_arrays
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    fallback: bool = False
    accepts: Callable[[Any], bool] | None = None

    @property
    def codec_id(self) -> str:
        """The id of the codec this modality stores values with."""
        return self.codec["id"]


def is_tensor(value: Any) -> bool:
    """True for a torch tensor, told by its type's module so that torch is never imported here."""
    return type(value).__module__.startswith("torch")


def is_array(value: Any) -> bool:
    """True for a numpy array or a torch tensor."""
    return isinstance(value, np.ndarray) or is_tensor(value)


def as_array(value: Any) -> np.ndarray:
    """Turn a numpy array, torch tensor, or nested list into a numpy array (no copy if possible)."""
    if isinstance(value, np.ndarray):
        return value
    if is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple, int, float, bool, np.generic)):
        return np.asarray(value)
    raise TypeError(f"expected an array, got {type(value).__name__}")


@attrs.frozen(slots=True)
class ArrayPolicy:
    """A dtype and shape policy for array modalities, usable as a spec's `prepare`.

    - `kinds`: numpy dtype kinds accepted ("b" bool, "i"/"u" integers, "f" float, "c" complex),
      among the dtypes the format stores (`neurocodec.npy.DTYPES`: float128 and the like are
      refused whatever the kinds, since the loaders cannot batch them).
    - `ndim`: required number of dimensions, or None for any.
    - `store_dtype`: a dtype every value is converted to, only when that loses nothing (video
      frames as uint8); a lossy value is an error.
    - `float_dtypes`: the dtypes a user may ask floats to be stored in through the `dtype`
      option (for example float16 for continuous signals; lossy, so opt-in only).
    """

    kinds: str = "biufc"
    ndim: int | None = None
    store_dtype: str | None = None
    float_dtypes: tuple[str, ...] = ()

    def __call__(self, value: Any, options: Mapping[str, Any]) -> np.ndarray:
        """Validate and convert one value."""
        array = as_array(value)
        if not npy.is_storable_dtype(array.dtype):
            raise TypeError(f"dtype {array.dtype} is not accepted: the format stores only "
                            f"{', '.join(npy.DTYPES)} (the dtypes the loaders batch); convert it first")
        if array.dtype.kind not in self.kinds:
            raise TypeError(f"dtype {array.dtype} is not accepted (kinds {self.kinds!r})")
        if self.ndim is not None and array.ndim != self.ndim:
            raise ValueError(f"expected {self.ndim} dimensions, got shape {array.shape}")
        if self.store_dtype is not None and array.dtype != np.dtype(self.store_dtype):
            array = _lossless_cast(array, np.dtype(self.store_dtype))
        wanted = options.get("dtype")
        if wanted is not None:
            if str(np.dtype(wanted)) not in self.float_dtypes:
                raise ValueError(f"dtype option {wanted!r} is not one of {self.float_dtypes}")
            if array.dtype.kind != "f":
                raise TypeError(f"the dtype option applies to float arrays, got {array.dtype}")
            array = array.astype(wanted)
        stored = npy.stored_name(array.dtype)
        if array.dtype.str != stored:  # big-endian: stored (and recorded) little-endian
            array = array.astype(stored)
        return array


def _lossless_cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    cast = array.astype(dtype)
    if not np.array_equal(cast, array):
        raise ValueError(f"values do not fit {dtype} exactly (got {array.dtype}); convert them first")
    return cast
