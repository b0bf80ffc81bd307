"""A Spark standalone cluster on one machine: a master and two workers, each its own "node".

Any 127.x.y.z address is the loopback interface on Linux, so a master bound to 127.0.0.2
with one worker there and another on 127.0.0.3 gives two hosts whose executors, tasks and
agents Spark and wattspan tell apart. Everything is started with the pyspark
distribution's ``bin/spark-class`` (no separate Spark install): each process gets
``SPARK_LOCAL_IP`` (its executors inherit it and bind to the same address), its own
``SPARK_WORKER_DIR`` and log file under a temporary directory, free ports, one core and
512 MiB, and the short-lived JVMs' options (``SHORT_JVM_OPTS`` of ``tests/spark_local.py``).
The cluster is up once the master's JSON page lists both workers ALIVE.

Test modules load the fixture with ``pytest_plugins = ["tests.spark_cluster"]`` and do not
import this module (pytest could then not rewrite its asserts): what they need is on the
fixture's object. Benches and scripts can use :class:`SparkCluster` directly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from tests.spark_local import SHORT_JVM_OPTS

MASTER_HOST = "127.0.0.2"
WORKER_HOSTS = ("127.0.0.2", "127.0.0.3")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """The pyspark distribution's directory (it holds ``bin/spark-class`` and ``jars``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class SparkCluster:
    """A master on :data:`MASTER_HOST` and a worker on each of :data:`WORKER_HOSTS`."""

    def __init__(
        self,
        workdir: Path,
        *,
        worker_hosts: tuple[str, ...] = WORKER_HOSTS,
        cores: int = 1,
        memory: str = "512m",
    ) -> None:
        self.workdir = workdir
        self.worker_hosts = worker_hosts
        self.cores = cores
        self.memory = memory
        self.master_port = free_port(MASTER_HOST)
        self.master_webui_port = free_port(MASTER_HOST)
        self.master_url = f"spark://{MASTER_HOST}:{self.master_port}"
        self.master_webui = f"http://{MASTER_HOST}:{self.master_webui_port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def _spawn(self, name: str, host: str, args: list[str]) -> subprocess.Popen[bytes]:
        home = spark_home()
        env = {
            **os.environ,
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": host,
            "SPARK_WORKER_DIR": str(self.workdir / f"{name}-work"),
            "SPARK_LOG_DIR": str(self.workdir / "logs"),
            "SPARK_NO_DAEMONIZE": "1",
            # The daemons themselves need little heap; executors get --memory.
            "SPARK_DAEMON_MEMORY": "256m",
            "SPARK_DAEMON_JAVA_OPTS": SHORT_JVM_OPTS,
        }
        env.pop("SPARK_CONF_DIR", None)
        log_path = self.workdir / f"{name}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [str(home / "bin" / "spark-class"), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "master",
            MASTER_HOST,
            [
                MASTER_CLASS,
                "--host",
                MASTER_HOST,
                "--port",
                str(self.master_port),
                "--webui-port",
                str(self.master_webui_port),
            ],
        )
        self._wait(lambda s: s is not None, timeout, "the master's web UI")
        for i, host in enumerate(self.worker_hosts):
            self._spawn(
                f"worker{i}",
                host,
                [
                    WORKER_CLASS,
                    "--host",
                    host,
                    "--port",
                    str(free_port(host)),
                    "--webui-port",
                    str(free_port(host)),
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--work-dir",
                    str(self.workdir / f"worker{i}-work"),
                    self.master_url,
                ],
            )
        want = set(self.worker_hosts)
        self._wait(
            lambda s: s is not None and want <= set(self.alive_worker_hosts(s)),
            timeout,
            f"workers on {', '.join(sorted(want))} to register",
        )
        return self

    def state(self) -> dict[str, Any] | None:
        """The master's JSON status page, or None while it does not answer."""
        try:
            got = get_json(f"{self.master_webui}/json", timeout=2.0)
        except (OSError, ValueError):
            return None
        return got if isinstance(got, dict) else None

    get_json = staticmethod(get_json)

    @staticmethod
    def alive_worker_hosts(state: dict[str, Any]) -> list[str]:
        return [w["host"] for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def _wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"{log.stem} exited with {proc.returncode} waiting for {what}:\n{tail}"
                    )
            if done(self.state()):
                return
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")

    def stop(self) -> None:
        """Workers first (they kill their executors), then the master."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                # A process group of our own (start_new_session): executors die with it.
                os.killpg(proc.pid, 9)
                proc.wait(5)
        self.procs.clear()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A running master and two workers (127.0.0.2, 127.0.0.3), shared by the modules that
    use it (each runs its own application on it, one after the other) and stopped at the
    end of the session: starting a cluster costs ~6 s of three JVMs."""
    with SparkCluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
