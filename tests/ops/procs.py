"""Process helpers of the ops tests: free ports, waiting for HTTP, finding a tree of processes."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, alive=lambda: True) -> httpx.Response:
    """GET ``url`` until it answers 200 (or ``alive()`` turns false, or time runs out)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"process died while waiting for {url}")
        try:
            reply = httpx.get(url, timeout=2.0)
            if reply.status_code == 200:
                return reply
            last = reply.status_code
        except httpx.HTTPError as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s (last: {last!r})")


def process_groups() -> dict[int, int]:
    """pid -> process group id of every live (non-zombie) process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry.name)] = int(fields[2])
    return out


def alive_in_groups(groups: set[int]) -> list[int]:
    """Live processes whose process group is one of ``groups`` (children started in new sessions)."""
    return [pid for pid, group in process_groups().items() if group in groups]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pid in process_groups()
