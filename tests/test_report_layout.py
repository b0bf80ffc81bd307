"""The report as a person reads it (issue 15, item 7), checked on the page headless Chromium
drew: legends clear of axis titles, span-lane labels clear of each other, integers printed
as integers, distinct colours for distinct series, constant parameters left out of the
parallel coordinates, learning rates on a log axis, one-value metrics as bars.

Geometry comes from the browser itself: a script added to a copy of the page waits for the
plots, reads the boxes of legends, titles and labels with ``getBoundingClientRect`` and
leaves them on ``<html data-layout>`` for ``--dump-dom`` to hand back.
"""

from __future__ import annotations

import html.parser
import json
import re
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from tests.test_analysis import RUN_A, RUN_B, make_store
from tests.test_report import _chromium, needs_chromium
from wattspan.agent.store import MetricRow, Run, SpanRow, Store
from wattspan.analysis.report import build_figures, write_report

RUN_C = "cccc1111-0000-0000-0000-000000000000"

PROBE = r"""
<script>
(function probe() {
  var root = document.documentElement;
  if (!root.hasAttribute('data-wattspan-rendered')) { setTimeout(probe, 50); return; }
  function box(el) {
    var r = el.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom];
  }
  function visible(el) {
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.display !== 'none' && s.visibility !== 'hidden'
      && el.textContent.trim() !== '' && parseFloat(s.opacity || '1') > 0;
  }
  var out = {};
  document.querySelectorAll('div.plot').forEach(function (div) {
    var titles = [];
    div.querySelectorAll('g[class^="g-"][class$="title"] text').forEach(function (t) {
      if (visible(t)) titles.push({text: t.textContent, box: box(t)});
    });
    var legend = div.querySelector('g.legend rect.bg');
    out[div.id] = {
      legend: legend ? box(legend) : null,
      titles: titles,
      bartext: Array.prototype.filter.call(div.querySelectorAll('text.bartext'), visible)
        .map(function (t) { return {text: t.textContent, box: box(t)}; }),
      texts: Array.prototype.map.call(div.querySelectorAll('svg text'),
        function (t) { return t.textContent; })
    };
  });
  root.setAttribute('data-layout', JSON.stringify(out));
})();
</script>
"""


class _Root(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root: dict[str, str | None] = {}
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.root = dict(attrs)
        self._in_td = tag == "td"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, data: str) -> None:
        if self._in_td:
            self.cells.append(data.strip())


def _store(path: Path) -> Store:
    """Runs A and B plus C: a third learning rate a decade below, batch size 128, a count
    logged once per run, and a seed that is the same everywhere. Run A also gets a root
    span beside its pipeline (a sidecar thread): two labels that would share a lane."""
    store = make_store(path)
    store.write_spans(
        [SpanRow(RUN_A, "aaaa-t3", "s-side", None, "sidecar", 1000.2, 1008.0, resources={})]
    )
    store.create_run(Run(RUN_C, "train-sgd-slow", "node-1", 3000.0, command=["python", "t.py"]))
    store.finish_run(RUN_C, 3010.0, 0, None)
    store.write_params(
        RUN_C, None, {"lr": 0.001, "batch_size": 128, "optimizer": "sgd", "augment": True}
    )
    for run_id, start, items in (
        (RUN_A, 1000.0, 13993),
        (RUN_B, 2000.0, 12001),
        (RUN_C, 3000.0, 9000),
    ):
        store.write_params(run_id, None, {"seed": 7})
        store.write_metrics([MetricRow(run_id, start + 9.0, "ml.items_seen", float(items), None)])
    store.write_metrics([MetricRow(RUN_C, 3005.0, "ml.accuracy", 0.6, 0, None, None)])
    return store


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Store]]:
    d = tmp_path_factory.mktemp("layout")
    store = _store(d / "wattspan.db")
    write_report(store, [RUN_A, RUN_B, RUN_C], d / "abc.html")
    yield d / "abc.html", store
    store.close()


@pytest.fixture(scope="module")
def drawn(page: tuple[Path, Store], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What Chromium drew: {"layout": per plot boxes and texts, "cells": table cells}."""
    path, _ = page
    tmp = tmp_path_factory.mktemp("chromium")
    probed = tmp / "probed.html"
    probed.write_text(path.read_text().replace("</body>", PROBE + "</body>"))
    proc = _chromium(tmp, probed.as_uri(), "--window-size=1200,900", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scan = _Root()
    scan.feed(proc.stdout)
    assert "data-wattspan-errors" not in scan.root, scan.root.get("data-wattspan-errors")
    layout = json.loads(scan.root.get("data-layout") or "{}")
    assert layout, "the probe found no plots"
    return {"layout": layout, "cells": scan.cells}


def _overlap(a: list[float], b: list[float]) -> float:
    """Area shared by two boxes (left, top, right, bottom)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


@needs_chromium
def test_no_legend_covers_a_title(drawn: dict[str, Any]) -> None:
    checked = 0
    for fid, plot in drawn["layout"].items():
        if plot["legend"] is None:
            continue
        for title in plot["titles"]:
            assert _overlap(plot["legend"], title["box"]) == 0, (fid, title["text"])
            checked += 1
    assert checked >= 10  # timelines, energy, metric plots: legends and titles were found


@needs_chromium
def test_span_lane_labels_do_not_overlap(drawn: dict[str, Any]) -> None:
    timeline = drawn["layout"]["fig-timeline-0"]
    labels = timeline["bartext"]
    assert {"pipeline", "sidecar", "orphan", "train"} <= {t["text"] for t in labels}, labels
    for a, b in combinations(labels, 2):
        assert _overlap(a["box"], b["box"]) == 0, (a["text"], b["text"])


@needs_chromium
def test_integers_are_printed_as_integers(drawn: dict[str, Any]) -> None:
    texts = [t for plot in drawn["layout"].values() for t in plot["texts"]]
    everything = texts + drawn["cells"]
    # SI-suffixed counts ("13.993k") and two-decimal integers ("128.00") nowhere.
    assert not [t for t in everything if re.search(r"\d\.\d+k\b", t)]
    assert not [t for t in everything if re.fullmatch(r"-?[\d,]+\.00( \w+)?", t)]
    assert "13,993" in texts  # the one-value count, on its bar
    assert "128" in drawn["cells"]  # batch size in the summary table
    params = drawn["layout"]["fig-params"]["texts"]
    assert "128" in params and "32" in params  # batch size ticks on the parallel axes


@needs_chromium
def test_parallel_coordinates_show_what_differs_and_lr_on_a_log_axis(
    drawn: dict[str, Any],
) -> None:
    params = drawn["layout"]["fig-params"]["texts"]
    assert "lr (log)" in params and "batch_size" in params
    assert "seed" not in params  # the same in every run
    assert {"0.001", "0.01", "0.1"} <= set(params)


def test_figure_data_behind_the_page(page: tuple[Path, Store]) -> None:
    _, store = page
    runs = [store.resolve_run(r) for r in (RUN_A, RUN_B, RUN_C)]
    figs = {f.id: f for f in build_figures(store, runs)}
    # Distinct series, distinct colours: per timeline, one colour per thing drawn (a
    # process's CPU and RSS are one thing), none shared by two.
    for fid in ("fig-timeline-0", "fig-timeline-1"):
        colours: dict[str, str] = {}
        for t in figs[fid].data:
            if t["type"] != "scatter":
                continue
            thing = t["name"].removesuffix(" RSS").removesuffix(" util")
            thing = "node" if thing in ("node", "node used") else thing
            colours.setdefault(thing, t["line"]["color"])
            assert colours[thing] == t["line"]["color"], (fid, t["name"])
        assert len(set(colours.values())) == len(colours), (fid, colours)
    # Constant parameters left out, named in the note; lr on a log axis of log10 values.
    par = figs["fig-params"]
    labels = [d["label"] for d in par.data[0]["dimensions"]]
    assert "seed" not in labels and "seed = 7" in par.note
    lr = next(d for d in par.data[0]["dimensions"] if d["label"] == "lr (log)")
    assert lr["values"] == pytest.approx([-1.0, -2.0, -3.0])
    batch = next(d for d in par.data[0]["dimensions"] if d["label"] == "batch_size")
    assert batch["tickformat"] == ",d"
    # A metric logged once per run is a bar per run; a curve stays a line.
    by_title = {f.title: f for f in figs.values() if f.section == "metrics"}
    (bars,) = by_title["ml.items_seen"].data
    assert bars["type"] == "bar" and bars["y"] == [13993.0, 12001.0, 9000.0]
    assert bars["text"] == ["13,993", "12,001", "9,000"]
    assert by_title["ml.items_seen"].layout["yaxis"]["tickformat"] == ",d"
    assert all(t["type"] == "scatter" for t in by_title["ml.accuracy"].data)
