"""An HTTP server on 127.0.0.1, in a thread, that serves images and misbehaves on request.

Routes map a path to a reply; the server records every request it got, and what it sent, so
a test can tell that a refused fetch never reached it, or that a client stopped reading.
Loopback only: nothing here listens on, or connects to, any other address.
"""

from __future__ import annotations

import contextlib
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Reply = Callable[[BaseHTTPRequestHandler, "ImageServer"], None]


@dataclass(frozen=True)
class SeenRequest:
    path: str
    host: str | None  # the Host header as sent


@dataclass
class ImageServer:
    routes: dict[str, Reply] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)  # by path, for streamed bodies
    finished: dict[str, threading.Event] = field(default_factory=dict)  # a streamed reply ended
    release: threading.Event = field(default_factory=threading.Event)  # ends hanging replies
    port: int = 0
    scheme: str = "http"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths_seen(self) -> list[str]:
        return [request.path for request in self.requests]


@contextmanager
def image_server(
    routes: dict[str, Reply] | None = None, tls: tuple[Path, Path] | None = None
) -> Iterator[ImageServer]:
    """Serving `routes`; with `tls` (a certificate and its key, PEM), over https."""
    state = ImageServer(routes=dict(routes or {}), scheme="http" if tls is None else "https")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(SeenRequest(self.path, self.headers.get("Host")))
            reply = state.routes.get(self.path.split("?", 1)[0])
            if reply is None:
                self.send_error(404)
                return
            # The client may hang up mid-reply: what some replies are there to see.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                reply(self, state)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read what they need from the server's records

    server = _LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


class _LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer's own asks for this machine's name (a reverse lookup, which may ask DNS).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


def body(data: bytes, content_type: str | None = "image/png", status: int = 200) -> Reply:
    def reply(handler: BaseHTTPRequestHandler, _: ImageServer) -> None:
        handler.send_response(status)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


def redirect(location: str, status: int = 302) -> Reply:
    def reply(handler: BaseHTTPRequestHandler, _: ImageServer) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


def stream(path: str, total_bytes: int, declared_length: int | None = None) -> Reply:
    """`total_bytes` of PNG-typed zeros, written until the client stops taking them; counts
    what was written in `bytes_sent[path]`. No Content-Length unless `declared_length`."""

    def reply(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        done = server.finished.setdefault(path, threading.Event())
        server.bytes_sent[path] = 0
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            if declared_length is not None:
                handler.send_header("Content-Length", str(declared_length))
            handler.end_headers()
            chunk = bytes(64 << 10)
            while server.bytes_sent[path] < total_bytes:
                handler.wfile.write(chunk)
                server.bytes_sent[path] += len(chunk)
        finally:
            done.set()

    return reply


def hang() -> Reply:
    """Reads the request, then answers nothing until the server stops."""

    def reply(_: BaseHTTPRequestHandler, server: ImageServer) -> None:
        server.release.wait()

    return reply


def trickle(interval_s: float) -> Reply:
    """A status line and then header bytes, one every `interval_s`, never ending."""

    def reply(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        handler.wfile.flush()
        while not server.release.wait(interval_s):
            handler.wfile.write(b"a")
            handler.wfile.flush()

    return reply
