"""``wattspan run --mlflow`` against a real ``mlflow server`` (SQLite backend, proxied
artifacts) on a free loopback port, read back through MLflow's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port

pytestmark = pytest.mark.server

MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
if MLFLOW is None:  # pragma: no cover - mlflow is in the test extra
    pytest.fail("mlflow is not installed: pip install -e '.[test]'", pytrace=False)

PROGRAM = """
import mlflow, wattspan
mlflow.start_run()
with wattspan.span("load"):
    data = list(range(200_000))
for epoch in range(3):
    with wattspan.span("train"):
        s = sum(i * i for i in data)
    mlflow.log_metric("accuracy", 0.5 + 0.1 * epoch, step=epoch)
mlflow.end_run()
"""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(MLFLOW), "server",
            "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
            "--artifacts-destination", str(d / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=open(d / "server.log", "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n" + (d / "server.log").read_text()[-3000:])
        time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _api(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        url + "/api/2.0/mlflow/" + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _run(url: str, store: Path, *args: str, env: dict[str, str] | None = None):
    e = {**os.environ, "MLFLOW_TRACKING_URI": url, **(env or {})}
    e.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "wattspan", "run", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=e,
    )


def test_program_run_gets_the_summary_stages_and_report(mlflow_server: str, tmp_path: Path) -> None:
    store = tmp_path / "w.db"
    p = _run(
        mlflow_server, store, "--mlflow", "--json", "--name", "mlrun", "--tag", "team=ml",
        "--", sys.executable, "-c", PROGRAM,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    run_id = summary["mlflow_run_id"]
    got = _api(mlflow_server, f"runs/get?run_id={run_id}")["run"]
    assert got["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    # The program's own metric and wattspan's are in ONE run.
    assert metrics["accuracy"] == pytest.approx(0.7)
    for k in ("wall_seconds", "cpu_seconds", "peak_rss_bytes", "process_energy_joules"):
        assert metrics[f"wattspan.{k}"] == pytest.approx(summary[k]), k
    assert metrics["wattspan.co2e_grams"] == pytest.approx(summary["co2e_grams"])
    assert metrics["wattspan.node_energy_joules"] == pytest.approx(summary["node_energy_joules"])
    assert metrics["stage.train.count"] == 3 and metrics["stage.load.count"] == 1
    assert metrics["stage.train.cpu_seconds"] > 0
    assert "stage.train.process_energy_joules" in metrics
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    assert tags["wattspan.run_id"] == summary["run_id"]
    assert tags["wattspan.carbon_intensity_g_per_kwh"] == f"{summary['carbon']['g_per_kwh']:g}"
    files = _api(mlflow_server, f"artifacts/list?run_id={run_id}").get("files", [])
    report = [f for f in files if f["path"] == "wattspan-report.html"]
    assert report and int(report[0]["file_size"]) > 100_000


def test_without_mlflow_code_a_new_run_is_made_and_ended(
    mlflow_server: str, tmp_path: Path
) -> None:
    p = _run(
        mlflow_server, tmp_path / "w.db", "--json", "--name", "plain",
        "--", sys.executable, "-c", "raise SystemExit(3)",
        env={"WATTSPAN_MLFLOW": "1"},
    )  # fmt: skip
    assert p.returncode == 3, p.stderr
    run_id = json.loads(p.stdout)["mlflow_run_id"]
    got = _api(mlflow_server, f"runs/get?run_id={run_id}")["run"]
    assert got["info"]["status"] == "FAILED"
    assert got["info"]["run_name"] == "plain"
    metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    assert metrics["wattspan.exit_code"] == 3


def test_unreachable_tracking_server_is_one_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    p = _run(
        url,
        tmp_path / "w.db",
        "--mlflow",
        "--",
        "true",
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert p.returncode == 2
    assert "--mlflow: tracking server" in p.stderr
