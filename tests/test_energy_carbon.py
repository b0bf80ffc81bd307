"""Process energy first and CO2e: the run summary's process share, the tables that show it
(run, runs, compare, the report), the carbon intensity table and its configuration, and
CO2e on /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from wattspan.agent import carbon
from wattspan.agent.config import load_config
from wattspan.agent.errors import ConfigError
from wattspan.agent.store import Run, Store
from wattspan.agent.summary import summarize
from wattspan.analysis import compare_runs
from wattspan.collectors.base import Sample

BURN = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\n"


def wattspan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattspan", *args], capture_output=True, text=True, timeout=120
    )


def _samples(start: float, secs: int, node_cores: float, proc_cores: float, watts: float):
    """Power model at ``watts``; the node busy ``node_cores``, the run's tree
    ``proc_cores``; a final ``run`` sample (wait4) with the tree's CPU."""
    out = []
    for k in range(secs + 1):
        t = start + k
        out.append(
            Sample(
                "cpu",
                t,
                {"cpu": "total"},
                {
                    "user_seconds_total": 100.0 + node_cores * k,
                    "idle_seconds_total": 500.0 + (4 - node_cores) * k,
                    "utilization_ratio": node_cores / 4,
                },
            )
        )
        out.append(
            Sample(
                "power_model",
                t,
                {"domain": "cpu", "estimated": "true"},
                {"energy_joules_total": watts * k, "idle_power_watts": 12.0},
            )
        )
        out.append(
            Sample(
                "process_tree",
                t,
                {"root": "1", "name": "x"},
                {"cpu_user_seconds_total": proc_cores * k, "cpu_system_seconds_total": 0.0},
            )
        )
    out.append(
        Sample(
            "run",
            start + secs,
            {},
            {"cpu_user_seconds_total": proc_cores * secs, "cpu_system_seconds_total": 0.0},
        )
    )
    return out


def test_process_share_by_hand() -> None:
    # 10 s at 50 W = 500 J; idle 12 W -> 120 J idle, 380 J active; the node is busy 2 cores
    # (20 CPU s), the run 0.5 core (5 CPU s): share 0.25, process 95 J, other 285 J.
    s = summarize(_samples(1000.0, 10, 2.0, 0.5, 50.0), 1000.0, 1010.0, 12.0, "model")
    assert s["node_energy_joules"] == pytest.approx(500.0)
    assert s["idle_energy_joules"] == pytest.approx(120.0)
    assert s["process_cpu_share"] == pytest.approx(0.25)
    assert s["process_energy_joules"] == pytest.approx(95.0)
    assert s["other_energy_joules"] == pytest.approx(285.0)
    assert s["energy_estimated"] is True
    parts = s["process_energy_joules"] + s["other_energy_joules"] + s["idle_energy_joules"]
    assert parts == pytest.approx(s["node_energy_joules"])
    # Without an idle figure there is no split to make, and none is invented.
    bare = summarize(_samples(1000.0, 10, 2.0, 0.5, 50.0), 1000.0, 1010.0)
    assert "process_energy_joules" not in bare and bare["node_energy_joules"] == 500.0


def test_run_reports_process_energy_and_co2e(store_path: Path) -> None:
    p = wattspan(
        "run", "--json", "--store", str(store_path), "--country", "FR", "--pue", "1.5",
        "--", sys.executable, "-c", BURN,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert 0 < s["process_energy_joules"] <= s["node_energy_joules"]
    assert 0 < s["process_cpu_share"] <= 1
    assert s["process_cpu_share"] == pytest.approx(
        min(s["cpu_seconds"] / s["node_busy_cpu_seconds"], 1.0)
    )
    parts = s["process_energy_joules"] + s["other_energy_joules"] + s["idle_energy_joules"]
    assert parts == pytest.approx(s["node_energy_joules"])
    fr = carbon.country("FR")
    assert s["carbon"] == {
        "g_per_kwh": fr.g_per_kwh,
        "source": f"France {fr.year} average (Our World in Data / Ember)",
        "pue": 1.5,
        "country": "FR",
    }
    assert s["co2e_grams"] == pytest.approx(s["node_energy_joules"] / 3.6e6 * 1.5 * 67.4)
    assert s["process_co2e_grams"] == pytest.approx(s["process_energy_joules"] / 3.6e6 * 1.5 * 67.4)
    # The stored run has the same figures, and the table shows the process share first.
    run = Store(store_path).resolve_run(s["run_id"])
    assert run.summary is not None
    assert run.summary["process_energy_joules"] == s["process_energy_joules"]
    t = wattspan("show", "--store", str(store_path), s["run_id"])
    assert t.returncode == 0, t.stderr
    out = t.stdout
    assert out.index("energy process") < out.index("energy node cpu")
    assert "67.4 g/kWh, France 2021 average" in out and "PUE 1.5" in out
    assert "CO2e process" in out


def test_runs_table_marks_estimates_and_shows_process_energy(store_path: Path) -> None:
    p = wattspan("run", "--store", str(store_path), "--name", "est", "--", "true")
    assert p.returncode == 0, p.stderr
    r = wattspan("runs", "--store", str(store_path))
    assert r.returncode == 0, r.stderr
    head = next(line for line in r.stdout.splitlines() if "process J" in line)
    assert head.index("process J") < head.index("node J")
    row = next(line for line in r.stdout.splitlines() if " est " in line)
    assert row.count("~") == 2  # both energies are the power model's
    assert "~ estimated" in r.stdout


def _store_two_runs(path: Path) -> Store:
    """Run ``busy-node`` used the least process energy on a busy node (the most node
    energy); run ``quiet-node`` the opposite."""
    store = Store(path)
    for rid, name, node_cores, proc_cores, watts in (
        ("11111111-0000-4000-8000-000000000001", "busy-node", 3.5, 0.5, 80.0),
        ("22222222-0000-4000-8000-000000000002", "quiet-node", 1.0, 1.0, 40.0),
    ):
        store.create_run(Run(rid, name, "h", 1000.0))
        samples = _samples(1000.0, 10, node_cores, proc_cores, watts)
        store.write_samples(rid, samples)
        summary = summarize(samples, 1000.0, 1010.0, 12.0, "model")
        carbon.annotate(summary, carbon.resolve(country_code="DE"))
        store.finish_run(rid, 1010.0, 0, summary)
    return store


def test_compare_ranks_by_process_energy_and_uses_one_intensity(tmp_path: Path) -> None:
    store = _store_two_runs(tmp_path / "w.db")
    runs = sorted(store.runs(), key=lambda r: r.name)
    comp = compare_runs(store, runs)
    proc = comp.row("process_energy_joules").values
    node = comp.row("energy_joules").values
    # busy-node: 800 J, idle 120, active 680, share 5/35 -> 97.1 J; quiet: 400, 280 x 1.
    assert proc == pytest.approx([680.0 / 7.0, 280.0])
    assert node == pytest.approx([800.0, 400.0])
    assert comp.row("energy_rank").values == [1, 2]  # not the node-energy order
    assert comp.row("energy_rank").label == "rank by process energy"
    labels = [r.key for r in comp.rows]
    assert labels.index("process_energy_joules") < labels.index("energy_joules")
    # The stored intensity (Germany) is used for both; --carbon-intensity overrides it.
    de = carbon.country("DE").g_per_kwh
    assert comp.carbon is not None and comp.carbon.g_per_kwh == de
    assert comp.row("co2e_grams").values == pytest.approx([800 / 3.6e6 * de, 400 / 3.6e6 * de])
    given = compare_runs(store, runs, carbon=carbon.resolve(100.0))
    assert given.row("process_co2e_grams").values == pytest.approx(
        [v / 3.6e6 * 100.0 for v in proc]
    )
    out = json.loads(
        wattspan(
            "compare", "--store", str(tmp_path / "w.db"), "--json", *(r.id for r in runs)
        ).stdout
    )
    assert out["carbon"]["g_per_kwh"] == de


def test_report_summary_and_span_chart_lead_with_process_energy(tmp_path: Path) -> None:
    from wattspan.analysis.report import render_report

    store = _store_two_runs(tmp_path / "w.db")
    page = render_report(store, sorted(store.runs(), key=lambda r: r.name))
    assert page.index("process energy") < page.index("node energy")
    assert "rank by process energy" in page
    assert "g/kWh, Germany 2021 average" in page


def test_country_table_and_errors() -> None:
    de = carbon.country("de")
    assert de == carbon.country("DEU") == carbon.country("Germany")
    assert 300 < de.g_per_kwh < 450 and de.year == 2021
    assert len({c.alpha2 for c in carbon.countries().values()}) >= 60
    with pytest.raises(carbon.CarbonError, match="did you mean"):
        carbon.country("Germny")
    with pytest.raises(carbon.CarbonError, match="PUE"):
        carbon.resolve(pue=0.5)
    d = carbon.resolve()
    assert (d.g_per_kwh, d.source) == (carbon.DEFAULT_INTENSITY, carbon.DEFAULT_SOURCE)
    assert d.grams(3.6e6) == pytest.approx(475.0)
    assert "475 g/kWh" in d.label()


def test_carbon_config_section() -> None:
    c = load_config(
        environ={"WATTSPAN_CARBON__INTENSITY_G_PER_KWH": "120", "WATTSPAN_CARBON__PUE": "1.2"}
    )
    i = carbon.from_config(c["carbon"])
    assert (i.g_per_kwh, i.pue, i.source) == (120.0, 1.2, "given")
    with pytest.raises(ConfigError, match=r"carbon\.country"):
        load_config(environ={"WATTSPAN_CARBON__COUNTRY": "Atlantis"})
    with pytest.raises(ConfigError, match=r"carbon\.pue"):
        load_config(environ={"WATTSPAN_CARBON__PUE": "0.9"})


def test_bad_country_on_the_command_line_is_one_line(store_path: Path) -> None:
    p = wattspan("run", "--store", str(store_path), "--country", "XX", "--", "true")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "no carbon intensity for country 'XX'" in p.stderr


def test_metrics_show_co2e_with_its_intensity() -> None:
    from wattspan.agent.exporters.prometheus import AgentCollector
    from wattspan.agent.pipeline import Pipeline

    pipe = Pipeline()
    now = time.time()
    pipe.emit(
        [
            Sample("rapl", now, {"domain": "package-0", "zone": "z0", "estimated": "false"},
                   {"energy_joules_total": 3.6e6}),
            Sample("rapl", now, {"domain": "package-0/dram", "zone": "z1", "estimated": "false"},
                   {"energy_joules_total": 9.9e6}),
            Sample("gpu", now, {"gpu": "0"}, {"energy_joules_total": 7.2e6}),
        ]
    )  # fmt: skip
    reg = CollectorRegistry()
    reg.register(AgentCollector(pipe, carbon=carbon.resolve(country_code="SE", pue=2.0)))
    text = generate_latest(reg).decode()
    se = carbon.country("SE").g_per_kwh
    from prometheus_client.parser import text_string_to_metric_families

    got = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }
    co2 = {dict(k[1])["domain"]: v for k, v in got.items() if k[0] == "wattspan_co2e_grams_total"}
    assert co2 == pytest.approx({"package-0": 1.0 * 2.0 * se, "gpu0": 2.0 * 2.0 * se})
    assert got[("wattspan_carbon_pue", ())] == 2.0
    ((labels, value),) = [
        (dict(k[1]), v) for k, v in got.items() if k[0] == "wattspan_carbon_intensity_grams_per_kwh"
    ]
    assert labels["country"] == "SE" and "Sweden" in labels["source"] and value == se
