"""Servers on loopback for the object-storage tests: moto's S3 server, a fault-injecting HTTP
proxy in front of it, a static HTTP file server, and a range-serving, byte-counting one.

Everything binds 127.0.0.1 on a free port and stops with its context manager.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import logging
import os
import socket
import threading
from typing import Callable, Iterator

BUCKET = "neurocodec-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on loopback with an empty bucket BUCKET; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("PUT", f"/{BUCKET}")  # moto accepts unsigned requests
        assert conn.getresponse().status == 200
        conn.close()
        yield endpoint
    finally:
        server.stop()


def s3_options(endpoint: str, **extra) -> dict:
    """Storage options for s3fs against a loopback endpoint."""
    return {
        "key": "testing", "secret": "testing", "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"}, "use_listings_cache": False, **extra,
    }


def no_sdk_retries(endpoint: str) -> dict:
    """Options with botocore's own retries off (its backoff sleeps for seconds): s3fs's short
    retry loop and neurocodec's retry layer must recover from injected failures."""
    return s3_options(endpoint, config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"},
                                               "connect_timeout": 5, "read_timeout": 10})


HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """A threaded HTTP proxy on loopback in front of `upstream` (host, port).

    Every request gets a number n (0, 1, 2, ... in arrival order) and `plan(n, method, path)`
    decides what happens: "pass" forwards it; "drop" closes the connection without an answer;
    "503" answers 503 SlowDown; "cut" forwards it and closes the connection halfway through
    the answer's body; "stall" sends half the body and then waits for `release()` before closing.
    `log` records (n, method, path, action) of every request.
    """

    def __init__(self, upstream: str, plan: Callable[[int, str, str], str] | None = None) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.plan = plan or (lambda n, method, path: "pass")
        self.log: list[tuple[int, str, str, str]] = []
        self._lock = threading.Lock()
        self._count = 0
        self.stalled = threading.Event()  # set when a stall began
        self._release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, socket.timeout):
                    self.close_connection = True

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        """End every stall (the stalled connections are closed)."""
        self._release.set()

    def requests(self, method: str | None = None, suffix: str = "", action: str | None = None) -> list:
        """Logged requests, filtered by method, path suffix (query excluded) and action."""
        with self._lock:
            return [r for r in self.log if (method is None or r[1] == method)
                    and r[2].split("?")[0].endswith(suffix) and (action is None or r[3] == action)]

    def _read_body(self, h: http.server.BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        with self._lock:
            n = self._count
            self._count += 1
        action = self.plan(n, h.command, h.path)
        with self._lock:
            self.log.append((n, h.command, h.path, action))
        h.close_connection = True
        if action == "drop":
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "503":
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(SLOWDOWN)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(SLOWDOWN if h.command != "HEAD" else b"")
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
        if body or h.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    h.send_header(k, v)
            length = resp.getheader("Content-Length") if h.command == "HEAD" else str(len(data))
            h.send_header("Content-Length", length or "0")
            h.send_header("Connection", "close")
            h.end_headers()
            if h.command == "HEAD":
                return
            if action in ("cut", "stall") and len(data) > 1:
                h.wfile.write(data[:len(data) // 2])
                h.wfile.flush()
                if action == "stall":
                    self.stalled.set()
                    self._release.wait(60)
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            h.wfile.write(data)
        finally:
            conn.close()


@contextlib.contextmanager
def static_http_server(directory: str) -> Iterator[str]:
    """http.server serving `directory` on loopback; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             functools.partial(Quiet, directory=directory))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RangeFileServer:
    """A threaded HTTP file server on loopback serving `directory` with what object stores give
    and http.server lacks: single-range GETs (`Range: bytes=a-b`, answered 206), `ETag`,
    `Accept-Ranges`. It counts the body bytes it sends per path (`sent`), and `plan(n, path)`
    decides what GET number n does: "pass" answers; "cut" sends half the body and closes the
    connection; "503" answers 503; "404" answers 404. `log` records (n, path, range, action).
    """

    def __init__(self, directory: str, plan: Callable[[int, str], str] | None = None) -> None:
        self.directory = directory
        self.plan = plan or (lambda n, path: "pass")
        self.log: list[tuple[int, str, str | None, str]] = []
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def do_GET(self) -> None:
                server._answer(self, body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "RangeFileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def total_sent(self) -> int:
        """Body bytes sent for every path."""
        with self._lock:
            return sum(self.sent.values())

    def _status(self, h: http.server.BaseHTTPRequestHandler, status: int) -> None:
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _answer(self, h: http.server.BaseHTTPRequestHandler, *, body: bool) -> None:
        name = h.path.split("?")[0].lstrip("/")
        local = os.path.join(self.directory, *name.split("/"))
        action = "pass"
        if body:
            with self._lock:
                n = len(self.log)
                action = self.plan(n, h.path)
                self.log.append((n, h.path, h.headers.get("Range"), action))
        if action in ("503", "404"):
            return self._status(h, int(action))
        if not os.path.isfile(local):
            return self._status(h, 404)
        st = os.stat(local)
        first, last, status = 0, st.st_size - 1, 200
        spec = h.headers.get("Range", "")
        if spec.startswith("bytes="):
            a, _, b = spec[6:].partition("-")
            first, last, status = int(a), min(int(b) if b else st.st_size - 1, st.st_size - 1), 206
            if first >= st.st_size:
                return self._status(h, 416)
        length = last - first + 1
        h.send_response(status)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {first}-{last}/{st.st_size}")
        h.end_headers()
        if not body:
            return
        with open(local, "rb") as f:
            f.seek(first)
            data = f.read(length)
        if action == "cut":
            data = data[:len(data) // 2]
        h.wfile.write(data)
        with self._lock:
            self.sent[name] = self.sent.get(name, 0) + len(data)
        if action == "cut":
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
