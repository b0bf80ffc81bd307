"""A real Prometheus server on a free loopback port, scraping given targets."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from tests.procs import free_port, http_get, require_binary, stop_process, wait_for


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  scrape_timeout: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: wattspan\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.proc = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=(workdir / "prometheus.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: http_get(f"{self.url}/-/ready")[0] == 200, 60, "prometheus ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}")
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        _, body = http_get(f"{self.url}/api/v1/targets")
        return json.loads(body)["data"]["activeTargets"]

    def stop(self) -> None:
        stop_process(self.proc)
