"""Read timeouts for `http://` and `https://` URLs.

fsspec reads such URLs through aiohttp, whose default gives a request five minutes in all and
no limit on a silence between bytes: a server that stops answering in the middle of a body held
a reader for five minutes per attempt. With a limit on the silence, a stalled read fails as a
timeout, which the retry policy (`neurocodec.storage.retry`) retries like a dropped connection.
"""

from __future__ import annotations

from typing import Any, Mapping

CONNECT_TIMEOUT_S = 30.0
SILENCE_TIMEOUT_S = 60.0


def with_http_timeouts(url: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """`storage_options` for opening `url`, with aiohttp timeouts added for an http(s) URL
    (connect 30 s, at most 60 s without a byte, no limit on a whole transfer) unless the
    options set `client_kwargs["timeout"]` themselves; other URLs' options are returned as given."""
    options = dict(storage_options)
    if not url.lower().startswith(("http://", "https://")):
        return options
    try:
        import aiohttp
    except ImportError:  # fsspec then says what to install for http(s)
        return options
    client = dict(options.get("client_kwargs") or {})
    if "timeout" not in client:
        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                                  sock_read=SILENCE_TIMEOUT_S)
    options["client_kwargs"] = client
    return options
