"""``wattspan run --mlflow``: the run's figures into MLflow, where the program's own metrics are.

Before the command starts, the bridge picks the MLflow run: the one ``MLFLOW_RUN_ID``
already names (the caller chose it), else a new run in ``MLFLOW_EXPERIMENT_ID`` /
``MLFLOW_EXPERIMENT_NAME`` (MLflow's default experiment otherwise), and hands its id to the
command as ``MLFLOW_RUN_ID``, which ``mlflow.start_run()`` resumes: a program that logs to
MLflow and wattspan's summary land in ONE run. When the command has ended it logs

* the summary as ``wattspan.*`` metrics (wall time, CPU seconds, peak RSS, process and node
  energy, GPU energy, CO2e, exit code) and the carbon intensity used as tags;
* per span name (a pipeline's stages) ``stage.<name>.{count,wall_seconds,cpu_seconds,
  process_energy_joules,node_energy_joules,gpu_energy_joules,peak_rss_bytes}``;
* the HTML report (``wattspan-report.html``) as an artifact;

and ends the run if the program left it open. The tracking server is MLflow's own
``MLFLOW_TRACKING_URI`` (with its usual defaults). mlflow is imported only with
``--mlflow``: it is not a dependency of wattspan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("wattspan.mlflow")

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")
#: Summary keys logged as ``wattspan.<key>`` metrics.
SUMMARY_METRICS = (
    "wall_seconds",
    "cpu_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "cpu_percent_avg",
    "peak_rss_bytes",
    "process_energy_joules",
    "node_energy_joules",
    "idle_power_watts",
    "co2e_grams",
    "process_co2e_grams",
)
STAGE_FIELDS = {
    "wall_seconds": "wall_seconds",
    "cpu_seconds": "cpu_seconds",
    "process_energy_joules": "process_energy_joules",
    "node_energy_joules": "node_energy_total_joules",
    "gpu_energy_joules": "gpu_energy_total_joules",
}


class MlflowError(RuntimeError):
    """mlflow missing, or the tracking server refused to give a run."""


def key(name: str) -> str:
    """An MLflow metric key (letters, digits, ``_-./`` and spaces; 250 characters)."""
    return _BAD_KEY.sub("_", name)[:250]


def stage_metrics(spans: list[Any]) -> dict[str, float]:
    """``stage.<span name>.<field>`` summed over the spans of that name (max for RSS)."""
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in spans:
        res = s.resources or {}
        a = acc[s.name]
        a["count"] += 1
        for out, k in STAGE_FIELDS.items():
            v = res.get(k)
            if k == "wall_seconds" and v is None:
                v = s.end_ts - s.start_ts
            if isinstance(v, int | float):
                a[out] += float(v)
        rss = res.get("peak_rss_bytes")
        if isinstance(rss, int | float):
            a["peak_rss_bytes"] = max(a["peak_rss_bytes"], float(rss))
    return {key(f"stage.{n}.{f}"): v for n, fields in acc.items() for f, v in fields.items()}


def summary_metrics(summary: dict[str, Any], exit_code: int) -> dict[str, float]:
    out = {
        f"wattspan.{k}": float(summary[k])
        for k in SUMMARY_METRICS
        if isinstance(summary.get(k), int | float) and not isinstance(summary.get(k), bool)
    }
    gpus = [g["joules"] for g in summary.get("gpus") or [] if g.get("joules") is not None]
    if gpus:
        out["wattspan.gpu_energy_joules"] = float(sum(gpus))
    out["wattspan.exit_code"] = float(exit_code)
    return out


@dataclass
class MlflowBridge:
    client: Any
    run_id: str
    created: bool

    @classmethod
    def start(cls, run_name: str, tags: dict[str, str]) -> MlflowBridge:
        with contextlib.redirect_stdout(sys.stderr):
            return cls._start(run_name, tags)

    @classmethod
    def _start(cls, run_name: str, tags: dict[str, str]) -> MlflowBridge:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MlflowError(
                "mlflow is not installed in this environment (pip install mlflow)"
            ) from None
        client = MlflowClient()
        given = os.environ.get("MLFLOW_RUN_ID")
        try:
            if given:
                client.get_run(given)
                return cls(client, given, created=False)
            exp = os.environ.get("MLFLOW_EXPERIMENT_ID")
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
            if not exp and name:
                found = client.get_experiment_by_name(name)
                exp = found.experiment_id if found else client.create_experiment(name)
            run = client.create_run(
                exp or "0",
                run_name=run_name,
                tags={"wattspan.source": "wattspan run", **tags},
            )
        except Exception as exc:  # mlflow raises its own and requests' errors
            raise MlflowError(f"tracking server {client.tracking_uri}: {exc}") from None
        return cls(client, run.info.run_id, created=True)

    def child_env(self) -> dict[str, str]:
        return {"MLFLOW_RUN_ID": self.run_id}

    def abandon(self) -> None:
        if self.created:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    self.client.set_terminated(self.run_id, status="KILLED")
            except Exception as exc:
                log.warning("could not end MLflow run %s: %s", self.run_id, exc)

    def finish(self, result: Any, store_path: str | None) -> str:
        """Logs the run's figures (module doc); failures are logged, never raised: the
        command has run and its exit code stands. Returns the MLflow run id."""
        # mlflow prints "View run ..." links on stdout, which --json keeps for the summary.
        with contextlib.redirect_stdout(sys.stderr):
            return self._finish(result, store_path)

    def _finish(self, result: Any, store_path: str | None) -> str:
        from mlflow.entities import Metric, RunTag

        from wattspan.agent.store import Store, default_store_path

        summary, run = result.summary, result.run
        now = int(time.time() * 1000)
        metrics = summary_metrics(summary, result.exit_code)
        store: Store | None = None
        try:
            store = Store(Path(store_path) if store_path else default_store_path())
            metrics.update(stage_metrics(store.spans(run.id)))
        except Exception as exc:
            log.warning("no per-stage metrics for MLflow: %s", exc)
        carbon = summary.get("carbon") or {}
        tags = {
            "wattspan.run_id": run.id,
            "wattspan.energy_estimated": str(bool(summary.get("energy_estimated"))).lower(),
        }
        if carbon:
            tags["wattspan.carbon_intensity_g_per_kwh"] = f"{carbon.get('g_per_kwh', 0):g}"
            tags["wattspan.carbon_source"] = str(carbon.get("source", ""))
            tags["wattspan.pue"] = f"{carbon.get('pue', 1.0):g}"
        try:
            items = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
            for i in range(0, len(items), 1000):  # MLflow's log-batch limit
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception as exc:
            log.warning("could not log metrics to MLflow run %s: %s", self.run_id, exc)
        if store is not None:
            try:
                from wattspan.analysis.report import write_report

                with tempfile.TemporaryDirectory() as tmp:
                    path = write_report(store, [run], Path(tmp) / "wattspan-report.html")
                    self.client.log_artifact(self.run_id, str(path))
            except Exception as exc:
                log.warning("could not attach the report to MLflow run %s: %s", self.run_id, exc)
        try:
            if self.client.get_run(self.run_id).info.status == "RUNNING":
                status = "FINISHED" if result.exit_code == 0 else "FAILED"
                self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            log.warning("could not end MLflow run %s: %s", self.run_id, exc)
        return self.run_id
