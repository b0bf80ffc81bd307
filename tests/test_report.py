"""The HTML report: figure content, self-containment, and a real render in headless
Chromium (no JavaScript errors, every plot drawn, a screenshot that is not blank).

Chromium comes from the Debian package ``chromium`` (``apt-get install -y chromium``); the
browser tests are skipped where no Chromium is installed.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_analysis import RUN_A, RUN_B, make_store
from wattspan.agent.store import Run, SpanRow, Store
from wattspan.analysis.report import build_figures, render_report, write_report
from wattspan.cli.analysis_parsers import add_analysis_parsers

CHROMIUM = next(
    (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
EVIL = '</script><script>alert("x")</script><!--'


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs A and B plus a hostile one (markup in its name and span names) and a bare run
    with no samples at all; reports of them written once for the module."""
    d = tmp_path_factory.mktemp("report")
    store = make_store(d / "wattspan.db")
    store.create_run(Run("cccc0000-evil", EVIL, "node-1", 3000.0, command=["x", EVIL]))
    store.finish_run("cccc0000-evil", 3005.0, 1, None)
    store.write_spans(
        [SpanRow("cccc0000-evil", "t9", "s1", None, EVIL, 3000.0, 3001.0, resources={})]
    )
    store.write_params(
        "cccc0000-evil", None, {"lr": 0.5, "batch_size": 8, "optimizer": EVIL, "augment": False}
    )
    store.create_run(Run("dddd0000-bare", "bare", "node-1", 4000.0))
    write_report(store, [RUN_A, RUN_B], d / "ab.html")
    write_report(store, [RUN_A, RUN_B, "cccc0000-evil", "dddd0000-bare"], d / "all.html")
    write_report(store, ["dddd0000-bare"], d / "bare.html")
    store.close()
    yield d


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = make_store(tmp_path / "wattspan.db")
    yield s
    s.close()


# -- figures ------------------------------------------------------------------------------


def test_figures_cover_the_umlaut_views(store: Store) -> None:
    runs = [store.resolve_run(RUN_A), store.resolve_run(RUN_B)]
    figs = {f.id: f for f in build_figures(store, runs)}
    assert {f.section for f in figs.values()} == {
        "timeline", "energy", "metrics", "confusion", "params",
    }  # fmt: skip
    tl = figs["fig-timeline-0"]
    names = [t["name"] for t in tl.data]
    assert names[:2] == ["spans", "node"]
    assert {"package-0", "package-0/dram", "package-1", "GPU 0", "GPU 0 util"} <= set(names)
    # Power of package-0: 40 W until t=5, 60 W after (samples carry power_watts).
    p0 = next(t for t in tl.data if t["name"] == "package-0")
    assert p0["x"][:1] == [1.0] and p0["y"][4] == 40.0 and p0["y"][-1] == 60.0
    # Node CPU in cores busy: the /proc/stat busy counters grow by 2 s per s.
    node = next(t for t in tl.data if t["name"] == "node")
    assert set(node["y"]) == {2.0}
    # Span bands: the root "pipeline" covers the run, so its children are shaded (and the
    # orphan root, which is a stage of its own).
    assert len(tl.layout["shapes"]) == 4
    tl_b = figs["fig-timeline-1"]
    assert any(t["name"] == "cpu (estimated)" and t["line"]["dash"] == "dash" for t in tl_b.data)

    energy = figs["fig-span-energy"]
    assert [t["name"] for t in energy.data] == ["train-sgd (aaaa0000)", "train-adam (bbbb0000)"]
    acc = figs["fig-metric-0"]
    assert acc.title == "ml.accuracy" and acc.layout["xaxis"]["title"]["text"] == "step"
    assert acc.data[0]["y"] == [0.5, 0.7, 0.85, 0.92, 0.95]
    cm = figs["fig-confusion-0"].data[0]
    assert cm["x"] == ["cat", "dog", "bird"] and cm["z"][0] == [50, 3, 2]
    par = figs["fig-params"].data[0]
    labels = [d["label"] for d in par["dimensions"]]
    assert labels[:4] == ["augment", "batch_size", "lr (log)", "optimizer"]
    assert par["line"]["color"] == [0.95, 0.93]  # coloured by final accuracy
    opt = par["dimensions"][3]
    assert opt["ticktext"] == ["adam", "sgd"] and opt["values"] == [1, 0]


def test_single_run_energy_is_stacked_by_attribution(store: Store) -> None:
    run = store.resolve_run(RUN_A)
    fig = next(f for f in build_figures(store, [run]) if f.section == "energy")
    assert fig.layout["barmode"] == "stack"
    parts = {t["name"]: dict(zip(t["y"], t["x"], strict=True)) for t in fig.data}
    assert set(parts) == {"this process", "other processes", "idle", "GPU"}
    pipeline = next(s for s in store.spans(RUN_A) if s.name == "pipeline").resources
    assert parts["this process"]["pipeline"] == pytest.approx(pipeline["process_energy_joules"])
    assert parts["idle"]["pipeline"] == pytest.approx(20.0 * 10)  # idle 20 W for 10 s
    total = sum(parts[k]["pipeline"] for k in ("this process", "other processes", "idle"))
    assert total == pytest.approx(pipeline["node_energy_total_joules"])
    assert parts["GPU"]["pipeline"] == pytest.approx(1000.0)


# -- the page -----------------------------------------------------------------------------


class _TagScan(html.parser.HTMLParser):
    """Start tags outside <script> content (the parser treats script bodies as text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_is_self_contained(report_dir: Path) -> None:
    text = (report_dir / "all.html").read_text()
    scan = _TagScan()
    scan.feed(text)
    for tag, attrs in scan.tags:
        for key in ("src", "href", "srcset", "data"):
            v = attrs.get(key)
            assert v is None or v.startswith("#"), (tag, key, v)  # nothing to fetch
        assert tag not in ("link", "iframe", "img"), tag
    scripts = [a for t, a in scan.tags if t == "script"]
    # error recorder, plotly.js, figure JSON, renderer: the hostile name added none.
    assert len(scripts) == 4
    assert "plotly.js v" in text
    assert EVIL not in text  # escaped everywhere


# -- headless Chromium --------------------------------------------------------------------


def _chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        # Any network request fails: the page must not need one.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


class _PlotScan(html.parser.HTMLParser):
    """Finds <html> attributes and, per div.plot, whether an svg.main-svg is inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.root: dict[str, str | None] = {}
        self.title = ""
        self.plots: dict[str, bool] = {}
        self._stack: list[tuple[str, str | None]] = []  # (tag, plot id it opens)
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.root = a
        self._in_title = tag == "title"
        plot_id = None
        if tag == "div" and "plot" in (a.get("class") or "").split():
            plot_id = a.get("id") or "?"
            self.plots[plot_id] = False
        if tag == "svg" and "main-svg" in (a.get("class") or "").split():
            for _, pid in self._stack:
                if pid is not None:
                    self.plots[pid] = True
        if tag not in ("meta", "br", "path", "rect", "line", "circle", "img", "input", "hr"):
            self._stack.append((tag, plot_id))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


@needs_chromium
@pytest.mark.parametrize("name", ["ab.html", "all.html", "bare.html"])
def test_report_renders_in_chromium_without_errors(
    report_dir: Path, tmp_path: Path, name: str
) -> None:
    page = report_dir / name
    proc = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scan = _PlotScan()
    scan.feed(proc.stdout)
    assert "data-wattspan-errors" not in scan.root, scan.root.get("data-wattspan-errors")
    assert not scan.title.startswith("[error]")
    assert "Uncaught" not in proc.stderr
    n = int(scan.root.get("data-wattspan-rendered") or -1)
    assert n == len(scan.plots)
    assert all(scan.plots.values()), [k for k, ok in scan.plots.items() if not ok]
    if name == "all.html":
        # 3 timelines (the bare run has nothing to plot), span energy, 3 metrics, 2
        # confusion matrices, parallel coordinates (without the bare run's line).
        assert n == 3 + 1 + 3 + 2 + 1
        assert {"fig-params", "fig-span-energy", "fig-confusion-1"} <= set(scan.plots)
    if name == "bare.html":
        assert n == 0


@needs_chromium
def test_the_error_recorder_catches_errors(report_dir: Path, tmp_path: Path) -> None:
    # Sanity check of the check: a broken figure must show up as an error.
    bad = tmp_path / "bad.html"
    text = (report_dir / "ab.html").read_text()
    bad.write_text(text.replace("</main>", "<script>undefinedFunction()</script></main>"))
    proc = _chromium(tmp_path, bad.as_uri(), "--dump-dom")
    scan = _PlotScan()
    scan.feed(proc.stdout)
    assert "undefinedFunction" in (scan.root.get("data-wattspan-errors") or "")
    assert scan.title.startswith("[error]")


def read_png(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixel bytes) of an 8-bit non-interlaced PNG: enough
    for Chromium's screenshots, with no imaging library needed."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, (depth, interlace)
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if f == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def _pixel_stats(path: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not near-white)."""
    try:
        from PIL import Image  # faster where installed; the pure decoder is the fallback

        im = Image.open(path).convert("RGB")
        px: Any = list(im.getdata())
    except ImportError:
        w, h, ch, raw = read_png(path)
        px = [tuple(raw[i : i + 3]) for i in range(0, w * h * ch, ch)]
    colours = set(px)
    dark = sum(1 for p in px if min(p) < 235)
    return len(colours), dark / len(px)


@needs_chromium
def test_report_screenshot_is_not_blank(report_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = _chromium(
        tmp_path,
        (report_dir / "ab.html").as_uri(),
        "--window-size=1000,1800",
        f"--screenshot={shot}",
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    colours, inked = _pixel_stats(shot)
    # Text, tables and anti-aliased plot lines give thousands of colours; a blank or
    # error page gives a handful.
    assert colours > 300, colours
    assert inked > 0.03, inked


def test_read_png_decodes_all_filters(tmp_path: Path) -> None:
    # A 3x2 RGB image with rows using filters 1..4 in turn, encoded by hand.
    w, ch = 3, 3
    rows = [bytes([10, 20, 30, 40, 50, 60, 70, 80, 90]), bytes([5, 6, 7, 8, 9, 10, 200, 210, 220])]
    raw = b""
    prev = bytes(w * ch)
    for f, row in zip((4, 3), rows, strict=True):
        enc = bytearray()
        for i, x in enumerate(row):
            a = row[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 3:
                pred = (a + b) >> 1
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            enc.append((x - pred) & 0xFF)
        raw += bytes([f]) + enc
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, 2, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path = tmp_path / "t.png"
    path.write_bytes(png)
    assert read_png(path) == (3, 2, 3, rows[0] + rows[1])


# -- CLI ----------------------------------------------------------------------------------


def test_cli_report(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_analysis_parsers(p.add_subparsers(dest="command"))
    db = str(tmp_path / "wattspan.db")
    out = tmp_path / "r.html"
    args = p.parse_args(
        ["report", "train-sgd", RUN_B, "--store", db, "-o", str(out), "--title", "two runs"]
    )
    assert args.handler(args) == 0
    assert "<title>two runs</title>" in out.read_text()
    assert f"wrote {out}" in capsys.readouterr().err
    args = p.parse_args(["report", RUN_A, "--store", db, "-o", str(tmp_path / "no" / "r.html")])
    assert args.handler(args) == 1
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["report", RUN_A, "--store", db])  # -o is required
    assert exc.value.code == 2


def test_render_needs_a_run(store: Store) -> None:
    with pytest.raises(ValueError):
        render_report(store, [])
