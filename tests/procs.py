"""Helpers for tests that start real processes: free ports, waiting for readiness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tests.servers import free_port

__all__ = [
    "free_port",
    "http_get",
    "kill_when_counted",
    "require_binary",
    "stop_process",
    "wait_for",
]


def wait_for(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def require_binary(name: str) -> str:
    """The path of a binary the test needs; CI installs it (.ci/run), so absence is an error."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise RuntimeError(f"{name} is not installed; run .ci/run or install the Debian package")
    return path


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_when_counted(script: str, args: list[str], threshold: int) -> int:
    """Run ``python -c script *args``, which prints a running count per line; SIGKILL it
    once the count reaches ``threshold``; return the last count it printed.

    The child keeps going until the signal lands, and what it printed meanwhile counts too:
    a line printed is a promise the child made (data acknowledged, a commit done).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    count = 0
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            count = int(line)
            if count >= threshold:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for line in proc.stdout.read().splitlines():
        count = int(line)
    proc.stdout.close()
    return count
