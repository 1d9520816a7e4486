"""Retrying transient storage errors with exponential backoff and a bounded number of attempts.

Transient: dropped or reset connections, timeouts, HTTP 5xx, 429/408 and throttling answers
(`SlowDown`, `Throttling`, ...), payload errors, and a download whose checksum does not match
(it may have been damaged on the way). Permanent, raised at once: missing objects, permission
errors, other 4xx answers, and errors of the local disk.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from typing import Callable, TypeVar

import attrs

log = logging.getLogger("neurocodec.storage")
T = TypeVar("T")

_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    FileExistsError)
_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EEXIST, errno.EISDIR,
                     errno.ENOTDIR, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests", "BandwidthLimitExceeded",
                    "RequestThrottled", "InternalServerError", "ServerBusy", "OperationTimedOut"}
_TRANSIENT_MODULES = ("aiohttp", "botocore", "urllib3", "http.client", "requests", "asyncio",
                      "google.auth.exceptions", "google.api_core")


class ChecksumMismatch(OSError):
    """A downloaded file's size or SHA-256 differs from the manifest's (retried: may be transient)."""


def _http_status(exc: BaseException) -> int | None:
    # aiohttp's parser errors (a body cut short: ContentLengthError) carry a parser `code` of
    # 400 that is no HTTP status: the connection broke, which is worth retrying.
    parser_error = any(cls.__name__ == "HttpProcessingError" for cls in type(exc).__mro__)
    for attr in ("status", "status_code") if parser_error else ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _chain(exc: BaseException, depth: int = 6):
    seen = set()
    while exc is not None and id(exc) not in seen and depth > 0:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
        depth -= 1


def is_transient(exc: BaseException) -> bool:
    """True if retrying the operation that raised `exc` may succeed."""
    if isinstance(exc, ChecksumMismatch):
        return True
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    for link in _chain(exc):
        status = _http_status(link)
        if status is not None:
            return (status >= 500 and status not in (501, 505)) or status in (408, 429)
        if _error_code(link) in _TRANSIENT_CODES:
            return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    module = type(exc).__module__ or ""
    return any(module == m or module.startswith(m + ".") for m in _TRANSIENT_MODULES)


@attrs.frozen
class RetryPolicy:
    """`attempts` tries in all, sleeping `base_delay * 2**n` (capped at `max_delay`, with
    jitter between half and all of it) after the n-th failure."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __attrs_post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ValueError(f"attempts must be a positive integer, got {self.attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    @classmethod
    def default(cls) -> "RetryPolicy":
        """The policy used where none is given: 5 attempts from 0.5 s, or as set by
        `$NEUROCODEC_RETRY_ATTEMPTS`, `$NEUROCODEC_RETRY_BASE_DELAY`, `$NEUROCODEC_RETRY_MAX_DELAY`."""
        env = os.environ
        try:
            return cls(int(env.get("NEUROCODEC_RETRY_ATTEMPTS", 5)),
                       float(env.get("NEUROCODEC_RETRY_BASE_DELAY", 0.5)),
                       float(env.get("NEUROCODEC_RETRY_MAX_DELAY", 20.0)))
        except ValueError as exc:
            raise ValueError(f"invalid NEUROCODEC_RETRY_* setting: {exc}") from None

    def delay(self, failure: int) -> float:
        """Seconds to sleep after failure number `failure` (0-based)."""
        return min(self.max_delay, self.base_delay * 2**failure) * (0.5 + random.random() / 2)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`, retrying transient errors; raise `RetriesExhausted` when every attempt
        failed transiently, and a permanent error at once."""
        for failure in range(self.attempts):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if failure == self.attempts - 1:
                    raise RetriesExhausted(what, self.attempts, exc) from exc
                pause = self.delay(failure)
                log.warning("%s failed (%s: %s); retry %d of %d in %.2fs", what, type(exc).__name__,
                            exc, failure + 1, self.attempts - 1, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover


class RetriesExhausted(Exception):
    """Every attempt of an operation failed with a transient error; `last` is the final one."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what}: failed {attempts} times, last with {type(last).__name__}: {last}")
        self.what, self.attempts, self.last = what, attempts, last
