"""One exception hierarchy for everything neurocodec raises on purpose.

Every error names what is at fault (file, shard, member, sample or field) so that a user
reading one line of a log knows where to look.
"""

from __future__ import annotations


class NeurocodecError(Exception):
    """Base class of every error neurocodec raises on purpose."""


class PluginError(NeurocodecError):
    """A plugin could not be loaded, or registered something invalid."""


class PluginLoadError(PluginError):
    """An entry-point plugin failed to import; the message names its distribution."""


class DuplicateRegistrationError(PluginError):
    """Two plugins registered the same modality name or codec id; the message names both."""


class UnknownCodecError(NeurocodecError):
    """A dataset uses a codec id that no installed plugin provides."""


class UnknownModalityError(NeurocodecError):
    """A modality name is not registered by any plugin."""


class SampleError(NeurocodecError, ValueError):
    """A sample handed to the writer is invalid (bad key, dtype, shape, or schema)."""


class DatasetExistsError(NeurocodecError, FileExistsError):
    """The output directory already holds a dataset and overwriting was not asked for."""


class WriterClosedError(NeurocodecError):
    """A sample was written after `finalize()` or after the writer failed."""


class DatasetError(NeurocodecError):
    """A dataset directory is missing, incomplete, or its manifest is invalid."""


class ShardError(NeurocodecError):
    """A shard or its index is corrupt, truncated, hostile or does not match the manifest.

    Attributes name what was at fault so that callers can log or skip precisely.
    """

    def __init__(self, message: str, *, shard: str | None = None, member: str | None = None,
                 sample: int | None = None) -> None:
        where = []
        if shard is not None:
            where.append(f"shard {shard}")
        if member is not None:
            where.append(f"member {member}")
        elif sample is not None:
            where.append(f"sample {sample}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.shard = shard
        self.member = member
        self.sample = sample


class DatasetLockedError(DatasetError):
    """Another writer holds the output directory's writer lock (two writers on one dataset);
    the message names the directory and, when known, the holder's process id."""
