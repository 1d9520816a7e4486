"""Per-sample transforms run where samples are decoded, with a generator of their own.

A transform is any callable `transform(sample, rng) -> sample`: `sample` is the decoded sample
(a dict of numpy arrays, value objects such as `SpikeEvents`, `metadata` and `__key__`), `rng`
a `numpy.random.Generator` that depends only on (seed, epoch, sample id):

    numpy.random.default_rng(numpy.random.SeedSequence([seed, epoch, 2, sample_id]))

`sample_id` is the sample's global index in the dataset (its place in storage order, what
`Dataset[i]` reads), never its place in a worker, a batch or a rank, so a sample is transformed
the same way whatever the number of workers or ranks and after a resume, and differently in
every epoch. The `2` keeps these streams apart from the epoch order's, which are seeded by
`[seed, epoch, 0]` and `[seed, epoch, 1, block]` (see `neurocodec.loader.order`).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Mapping

import numpy as np

from neurocodec.errors import NeurocodecError

TRANSFORM_STREAM = 2
"""The word after (seed, epoch) in every transform generator's seed (see the module doc)."""

Transform = Callable[[dict[str, Any], np.random.Generator], Mapping[str, Any]]


class TransformError(NeurocodecError):
    """A `transform=` callable raised, or returned something that is not a sample; the message
    names the dataset, the sample (global id and key) and the epoch. `sample` and `key` hold them."""

    def __init__(self, message: str, *, sample: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.sample = sample
        self.key = key


def sample_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    """The generator a transform gets for sample `sample_id` of `epoch` under `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), TRANSFORM_STREAM, int(sample_id)]))


def check_transform(transform: Any) -> Transform | None:
    """`transform` if it is None or callable; TypeError otherwise."""
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be a callable (sample, rng) -> sample or None, got {type(transform).__name__}")
    return transform


def check_picklable(transform: Any, context: Any) -> None:
    """TypeError saying what to do when `transform` cannot reach workers started with `context`
    (spawn or forkserver pickle the loader; fork does not)."""
    if transform is None:
        return
    try:
        pickle.dumps(transform)
    except Exception as exc:  # pickle raises PicklingError, TypeError, AttributeError...
        raise TypeError(
            f"transform {transform!r} cannot be pickled ({type(exc).__name__}: {exc}), and DataLoader workers "
            f"started with multiprocessing_context={context!r} receive it pickled: use a function defined at "
            "module level, a functools.partial of one, or an instance of a module-level class "
            "(not a lambda or a nested function)") from exc


def apply_transform(transform: Transform, sample: dict[str, Any], *, seed: int, epoch: int, sample_id: int,
                    dataset: Any) -> dict[str, Any]:
    """`transform(sample, rng)` for sample `sample_id`; any exception it raises, or a result that
    is not a dict, becomes a TransformError naming the sample."""
    key = sample.get("__key__")
    where = f"sample {sample_id} (key {key!r}) of {dataset}, epoch {epoch}"
    try:
        out = transform(sample, sample_rng(seed, epoch, sample_id))
    except Exception as exc:
        raise TransformError(f"transform {_name(transform)} failed on {where}: {type(exc).__name__}: {exc}",
                             sample=sample_id, key=key) from exc
    if not isinstance(out, Mapping):
        raise TransformError(f"transform {_name(transform)} returned {type(out).__name__} for {where}; it must "
                             "return the sample (a dict)", sample=sample_id, key=key)
    return out if type(out) is dict else dict(out)


def _name(transform: Any) -> str:
    return getattr(transform, "__qualname__", None) or repr(transform)
