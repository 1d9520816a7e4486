"""Datasets on object storage: fsspec URLs (s3://, gs://, https://, memory://, ...) for every
dataset path, a shared local shard cache for reading, and upload-then-manifest for writing.

See docs/storage.md. Local paths never go through this package's remote layer.
"""

from neurocodec.storage.cache import ShardCache, default_cache_dir, parse_size
from neurocodec.storage.location import Location, dataset_path, file_url_path, is_remote, is_url
from neurocodec.storage.output import DatasetOutput
from neurocodec.storage.retry import ChecksumMismatch, RetryPolicy, is_transient

__all__ = [
    "ChecksumMismatch", "DatasetOutput", "Location", "RetryPolicy", "ShardCache", "dataset_path",
    "default_cache_dir", "file_url_path", "is_remote", "is_transient", "is_url", "parse_size",
]
