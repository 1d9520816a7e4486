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
    - `what`: what the values are, in the user's words, for error messages ("video frames").
    """

    kinds: str = "biufc"
    ndim: int | None = None
    store_dtype: str | None = None
    float_dtypes: tuple[str, ...] = ()
    what: str = "values of this modality"

    def __call__(self, value: Any, options: Mapping[str, Any]) -> np.ndarray:
        """Validate and convert one value; the errors say in plain words what is accepted and
        what to do (the writer prefixes the sample and field)."""
        array = as_array(value)
        if not npy.is_storable_dtype(array.dtype):
            names = ", ".join(np.dtype(d).name for d in npy.DTYPES)
            raise TypeError(f"dtype {array.dtype} is not accepted: arrays are stored as numbers or booleans "
                            f"({names}), which the loaders can batch; convert the value to one of these first")
        if array.dtype.kind not in self.kinds:
            raise TypeError(self._kind_refused(array.dtype))
        if self.ndim is not None and array.ndim != self.ndim:
            raise ValueError(f"{self.what} must have {self.ndim} dimension{'s' * (self.ndim != 1)}; this value "
                             f"has {array.ndim} (shape {array.shape}): reshape it first, or store it "
                             "under a modality that takes any shape, e.g. modalities={'<field>': 'array'}")
        if self.store_dtype is not None and array.dtype != np.dtype(self.store_dtype):
            array = _lossless_cast(array, np.dtype(self.store_dtype), self.what)
        wanted = options.get("dtype")
        if wanted is not None:
            array = self._as_option_dtype(array, wanted)
        stored = npy.stored_name(array.dtype)
        if array.dtype.str != stored:  # big-endian: stored (and recorded) little-endian
            array = array.astype(stored)
        return array

    def _kind_refused(self, dtype: np.dtype) -> str:
        takes = _kind_words(self.kinds)
        example = self.store_dtype or _EXAMPLES[next(k for k in "fiubc" if k in self.kinds)]
        stored = f", stored as {self.store_dtype}" if self.store_dtype else ""
        return (f"{self.what} must be {takes} (e.g. {example}){stored}; this value is {dtype}: convert it "
                f"first (e.g. to {example}; nothing is converted silently), or store it under a modality that "
                f"takes {_KIND_WORDS[dtype.kind]}, e.g. modalities={{'<field>': 'array'}}, which keeps any "
                "numeric dtype")

    def _as_option_dtype(self, array: np.ndarray, wanted: Any) -> np.ndarray:
        try:
            name = str(np.dtype(wanted))
        except (TypeError, ValueError):
            name = None
        if not self.float_dtypes:
            raise ValueError(f"this modality takes no dtype option (got {wanted!r}): leave it out; values keep "
                             "their own dtype")
        if name not in self.float_dtypes:
            raise ValueError(f"the dtype option may be {' or '.join(map(repr, self.float_dtypes))}, not "
                             f"{wanted!r}; leave it out to keep the values' own dtype")
        if array.dtype.kind != "f":
            raise TypeError(f"the dtype option {wanted!r} converts floating-point values only, and this value is "
                            f"{array.dtype}: leave the option out for this field (it keeps its dtype)")
        return array.astype(name)


_KIND_WORDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point values",
               "c": "complex numbers"}
_EXAMPLES = {"b": "bool", "i": "int16", "u": "uint8", "f": "float32", "c": "complex64"}


def _kind_words(kinds: str) -> str:
    """'integers or booleans' for kinds 'biu': the accepted kinds in plain words."""
    if "i" in kinds and "u" not in kinds:
        words = ["signed integers"]
    elif "u" in kinds and "i" not in kinds:
        words = ["unsigned integers"]
    else:
        words = ["integers"] if "i" in kinds else []
    words += [_KIND_WORDS[k] for k in "fbc" if k in kinds]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _lossless_cast(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    cast = array.astype(dtype)
    if not np.array_equal(cast, array):
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        fits = f" ({info.min}..{info.max})" if info is not None else ""
        seen = f"{array.min()}..{array.max()}" if array.size and array.dtype.kind in "iub" else "other values"
        raise ValueError(f"{what} are stored as {dtype}{fits}, and these ({array.dtype}, {seen}) do not fit "
                         f"exactly: scale or convert them to {dtype} first (nothing is rescaled silently), or "
                         "store them under a modality that keeps their dtype, e.g. modalities={'<field>': 'array'}")
    return cast
