"""Small helpers shared by the bench scripts (not part of the installed package).

Units: CPU and wall times in seconds, memory in bytes, unless a name says otherwise.
"""

from __future__ import annotations

import contextlib
import gzip as _gzip
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def proc_cpu_seconds(pid: int) -> float:
    """``utime + stime`` of process ``pid`` (all its threads, live and exited), in seconds.

    Resolution is one clock tick (``1/CLK_TCK``, usually 10 ms): measure over enough work.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def proc_rss_bytes(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of ``pid`` in bytes, from /proc/PID/status."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def proc_rss_breakdown(pid: int) -> dict[str, int]:
    """``RssAnon``/``RssFile``/``RssShmem`` of ``pid`` in bytes (what the RSS is made of)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith((b"RssAnon:", b"RssFile:", b"RssShmem:", b"Threads:")):
                key, value = line.decode().split(":", 1)
                n = int(value.split()[0])
                out[key] = n if key == "Threads" else n * 1024
    return out


def node_busy_seconds() -> float:
    """CPU seconds all CPUs of the node have spent busy since boot (/proc/stat ``cpu`` line:
    user + nice + system + irq + softirq + steal; guest time is already inside user)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """User + system CPU of this process's waited-for children (``RUSAGE_CHILDREN``)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0, gzip: bool = False) -> bytes:
    """The body of a GET; with ``gzip``, asked for gzip (as Prometheus scrapes) and not
    decompressed."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def count_series(body: bytes) -> int:
    """Samples (non-comment lines) in a Prometheus exposition, gzipped or not."""
    try:
        text = _gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    except OSError:
        text = body
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def wait_http(url: str, timeout: float = 15.0) -> bytes:
    """GET ``url`` until it answers 200 or ``timeout`` passes (then raises)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return http_get(url, timeout=2.0)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s: {last}")


@contextlib.contextmanager
def running(
    argv: Sequence[str], url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as a subprocess with its output discarded, once ``url`` (if given) answers;
    terminated on leaving the block."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if url:
            wait_http(url)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def wattspan_cmd() -> list[str]:
    """The ``wattspan`` CLI of the interpreter running the bench (its venv's script)."""
    script = Path(sys.executable).with_name("wattspan")
    if script.exists():
        return [str(script)]
    found = shutil.which("wattspan")
    if found:
        return [found]
    return [sys.executable, "-m", "wattspan"]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    """One line: CPU count, CPU model, kernel, Python."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rapl = "RAPL" if Path("/sys/class/powercap/intel-rapl:0").exists() else "no RAPL"
    return (
        f"{os.cpu_count()} CPUs ({model or platform.machine()}), {rapl}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def verdict(ratio: float, target: float) -> str:
    return "target met" if ratio <= target else "target missed"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f} ms"


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, as numpy's default."""
    s = sorted(xs)
    if not s:
        raise ValueError("percentile of no values")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


#: Grafana's ``rangeutil.roundInterval`` steps from 1 s up: (below this many ms, use this).
_GRAFANA_STEPS_MS = (
    (1_500, 1_000), (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000),
    (25_000, 20_000), (45_000, 30_000), (90_000, 60_000), (210_000, 120_000),
    (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
)  # fmt: skip


def grafana_interval(range_s: float, max_data_points: int) -> int:
    """``$__interval`` in whole seconds as Grafana computes it for a panel: the range over
    ``maxDataPoints``, rounded to its step (sub-second steps are not needed for a bench)."""
    ms = range_s * 1000 / max_data_points
    for below, step in _GRAFANA_STEPS_MS:
        if ms < below:
            return max(step // 1000, 1)
    return 86_400


def logged_port(
    log: Path, proc: subprocess.Popen[bytes], pattern: re.Pattern[bytes], timeout: float = 60.0
) -> int:
    """The port an agent started with port 0 logged (``pattern``'s group 1), read from its
    log file; raises with the log's tail if the agent exits or says nothing in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pattern.search(log.read_bytes())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"agent did not log its ports: {log.read_text()[-2000:]}")
