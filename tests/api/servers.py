"""A real `rtml serve` process (uvicorn) on a free loopback port, for the tests that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def rtml_serve(env: dict[str, str], *, workers: int = 1, wait_for: int | None = 200):
    """Start ``rtml serve``; wait until ``/ready`` answers ``wait_for`` (any answer when None).

    Yields (base URL, port, process); stops it with SIGTERM and checks it exits cleanly.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rtml_cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT, env={**os.environ, "RTML_LOG_LEVEL": "warning", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                status = httpx.get(f"{base}/ready", timeout=2).status_code
                if wait_for is None or status == wait_for:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                pytest.fail(f"rtml serve exited: {process.stdout.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"rtml serve did not answer /ready {wait_for} in 90 s: "
                            f"{process.stdout.read().decode()[-3000:]}")
            time.sleep(0.2)
        yield base, port, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        output = process.stdout.read().decode()
        assert code in (0, -signal.SIGTERM), output[-3000:]
