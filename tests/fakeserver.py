"""A real HTTP server on 127.0.0.1 that answers with scripted replies, for the SDKs to talk to.

Like httpx's MockTransport, but over a socket, so the provider SDKs run for real: their
request building, HTTP client, response parsing and exception mapping are all exercised.
Each route answers with its scripted replies in order (the last one repeats); every request
is recorded. A reply with ``hang=True`` never answers until the server closes, which makes
client timeouts deterministic without sleeping.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    """The bytes of a wire-format fixture, e.g. ``fixture("ollama/chat_nonstream_200.json")``."""
    return (FIXTURES / name).read_bytes()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # send the body with chunked transfer encoding, as streams are
    hang: bool = False
    #: Send the body as these exact pieces, each its own chunk and write (awkward boundaries).
    pieces: list[bytes] | None = None
    #: After the body, wait for the client to close the connection (streams it stops early).
    hold: bool = False
    #: After the body, reset the connection (RST) without ending the chunked body.
    reset: bool = False
    #: Send the status line and headers, then the body one byte at a time, this many seconds apart
    #: (a server that keeps every read alive); it stops when the client goes or the server closes.
    drip: float = 0.0
    #: With ``drip``: drip the status line and headers too.
    drip_headers: bool = False
    #: Send only this many bytes of the body (``Content-Length`` says all of them), then close.
    truncate: int | None = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    def __init__(self, default_headers: dict[str, str] | None = None) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[Recorded] = []
        self.connections = 0
        self.default_headers = default_headers or {}
        self.disconnected = threading.Event()  # set when a client closed a held response
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str, *replies: Reply) -> None:
        """Answer ``method path`` with ``replies`` in order; the last one repeats."""
        self.routes[(method, path)] = list(replies)

    def _next_reply(self, method: str, path: str) -> Reply:
        with self._lock:
            replies = self.routes.get((method, path.split("?")[0]))
            if not replies:
                return Reply(404, b'{"error":"no such route in the fake server"}', {"Content-Type": "application/json"})
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable
        # One buffered write per response and no Nagle: otherwise headers and body go out in
        # two segments and delayed ACKs add ~40 ms to every exchange.
        wbufsize = -1
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server.connections += 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            reply = server._next_reply(self.command, self.path)
            if reply.hang:
                server._release.wait()
                self.close_connection = True
                return
            if reply.drip:
                self._drip(reply)
                return
            self.send_response(reply.status)
            for name, value in {**server.default_headers, **reply.headers}.items():
                self.send_header(name, value)
            if reply.chunked or reply.pieces is not None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = reply.pieces if reply.pieces is not None else reply.body.splitlines(keepends=True)
                try:
                    for piece in pieces:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()  # each piece is its own chunk on the wire
                    if reply.reset:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        return
                    if reply.hold:
                        self._wait_for_close()
                        return
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away: what a stream it stopped looks like
                    server.disconnected.set()
                    self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.truncate is not None:
                    self.wfile.write(reply.body[: reply.truncate])
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)

        def _drip(self, reply: Reply) -> None:
            """The reply's head (all at once, or dripped too), then its body one byte per ``drip`` s."""
            headers = {**server.default_headers, **reply.headers, "Content-Length": str(len(reply.body))}
            head = f"HTTP/1.1 {reply.status} Dripping\r\n".encode()
            head += b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items()) + b"\r\n"
            self.close_connection = True
            try:
                if not reply.drip_headers:
                    self.connection.sendall(head)
                    head = b""
                for byte in [head[i : i + 1] for i in range(len(head))] + [
                    reply.body[i : i + 1] for i in range(len(reply.body))
                ]:
                    if server._release.wait(reply.drip):
                        return
                    self.connection.sendall(byte)
            except OSError:  # the client gave up
                server.disconnected.set()

        def _wait_for_close(self) -> None:
            """Block until the client closes the connection (or the server closes)."""
            self.connection.settimeout(0.05)
            while not server._release.is_set():
                try:
                    if self.connection.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            server.disconnected.set()
            self.close_connection = True

        do_GET = do_POST = do_HEAD = do_DELETE = _serve

    return Handler
