"""The stream benchmarks' seeded generators and ``wattspan stream generate``."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from wattspan.cli import main
from wattspan.cli.stream_cmd import ads_path, parse_count
from wattspan.engines.stream import datasets, io
from wattspan.engines.stream.datasets import BLOCK_ROWS, generator
from wattspan.engines.stream.datasets._common import zipf_ranks
from wattspan.engines.stream.datasets.cm import FAIL, JOB_ID_BASE
from wattspan.engines.stream.datasets.lrb import SEGMENT_FEET, SEGMENTS
from wattspan.engines.stream.datasets.ysb import AD_TYPES, ADS_SCHEMA, EVENT_TYPES, VIEW

NAMES = list(datasets.DATASETS)
# Not a multiple of the block size, so chunks straddle blocks.
N = 3 * BLOCK_ROWS + 12_345


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[c], b[c]) for c in a)


@pytest.mark.parametrize("name", NAMES)
def test_schema_order_and_dtypes(name: str) -> None:
    gen = generator(name, seed=3)
    batch = gen.take(1000)
    assert list(batch) == list(gen.schema)
    for col, dt in gen.schema.items():
        assert batch[col].dtype == dt, col
        assert len(batch[col]) == 1000
        assert batch[col].flags.c_contiguous
    assert gen.bytes_per_event() == sum(v.itemsize for v in batch.values())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_rows_however_chunked(name: str) -> None:
    whole = generator(name, seed=7).take(N)
    again = generator(name, seed=7).take(N)
    assert _equal(whole, again)
    for chunk_rows in (1000, BLOCK_ROWS, 100_003):
        parts = list(generator(name, seed=7).batches(N, chunk_rows=chunk_rows))
        assert [len(p[generator(name).time_column]) for p in parts[:-1]] == [chunk_rows] * (
            len(parts) - 1
        )
        joined = {c: np.concatenate([p[c] for p in parts]) for c in whole}
        assert _equal(whole, joined), chunk_rows
    other = generator(name, seed=8).take(N)
    differs = [c for c in whole if c != generator(name).time_column]
    assert any(not np.array_equal(whole[c], other[c]) for c in differs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rate", [1, 7, 1000])
def test_timestamps_follow_the_rate(name: str, rate: int) -> None:
    gen = generator(name, seed=1, rate=rate, start=50)
    ts = np.concatenate([b[gen.time_column] for b in gen.batches(20_000, chunk_rows=3000)])
    assert np.all(np.diff(ts) >= 0)
    assert ts[0] == 50
    # Every full second of event time holds exactly `rate` events.
    seconds = (ts - 50) // gen.time_unit
    counts = np.bincount(seconds)
    assert np.all(counts[:-1] == rate)
    assert 1 <= counts[-1] <= rate


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        generator("nope")
    with pytest.raises(ValueError, match="rate must be >= 1"):
        generator("ysb", rate=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        generator("cm", seed=-1)
    with pytest.raises(ValueError, match="events must be >= 0"):
        list(generator("sg").batches(-5))
    assert generator("lrb").take(0)["speed"].dtype == np.float32


def test_zipf_ranks_are_skewed_like_a_power_law() -> None:
    rng = np.random.default_rng(0)
    n, size = 1000, 400_000
    for s in (0.0, 0.8, 1.0, 1.5):
        ranks = zipf_ranks(rng, n, s, size)
        assert ranks.min() >= 0 and ranks.max() <= n - 1
        freq = np.bincount(ranks, minlength=n) / size
        expect = np.arange(1, n + 1, dtype=float) ** -s
        expect /= expect.sum()
        # The head, exact, within sampling noise; and past it (the continuous tail) the
        # mass of rank ranges matches the discrete law too.
        assert np.allclose(freq[:20], expect[:20], rtol=0.08, atol=5e-4), s
        for lo, hi in ((256, 400), (400, 1000)):
            assert abs(freq[lo:hi].sum() - expect[lo:hi].sum()) < 0.004, (s, lo)


def _top_share(keys: np.ndarray, frac: float) -> float:
    _, counts = np.unique(keys, return_counts=True)
    counts = np.sort(counts)[::-1]
    return counts[: max(1, int(len(counts) * frac))].sum() / counts.sum()


def test_ysb_events_and_ads_table() -> None:
    gen = generator("ysb", seed=5)
    ads = gen.ads
    assert list(ads) == list(ADS_SCHEMA)
    assert all(ads[c].dtype == dt for c, dt in ADS_SCHEMA.items())
    assert np.array_equal(ads["ad_id"], np.arange(1000))
    campaigns, per = np.unique(ads["campaign_id"], return_counts=True)
    assert len(campaigns) == 100 and np.all(per == 10)
    b = gen.take(300_000)
    assert set(np.unique(b["ad_type"])) == set(range(len(AD_TYPES)))
    assert np.array_equal(b["ad_type"], ads["ad_type"][b["ad_id"]])  # an ad has one type
    share = np.bincount(b["event_type"], minlength=3) / len(b["event_type"])
    assert len(share) == len(EVENT_TYPES) and np.allclose(share, 1 / 3, atol=0.01)
    # Skew: the top 1 % of ads take far more than 1 % of events (Zipf 1.0: ~ 40 %).
    assert 0.3 < _top_share(b["ad_id"], 0.01) < 0.55
    assert _top_share(b["user_id"], 0.01) > 0.2
    # A user's address is fixed.
    order = np.argsort(b["user_id"], kind="stable")
    u, ip = b["user_id"][order], b["ip_address"][order]
    same_user = u[1:] == u[:-1]
    assert same_user.any() and np.all(ip[1:][same_user] == ip[:-1][same_user])
    # Every campaign has views in every full 10 s window at the default rate.
    gen_full = generator("ysb", seed=5).take(2_000_000)
    views = gen_full["event_type"] == VIEW
    win = gen_full["event_time"][views] // 10_000
    camp = ads["campaign_id"][gen_full["ad_id"][views]]
    assert len(np.unique(win)) == 2
    for w in np.unique(win):
        assert len(np.unique(camp[win == w])) == 100


def test_ysb_event_mix_is_configurable() -> None:
    b = generator("ysb", seed=1, event_probs=(1.0, 0.0, 0.0)).take(5000)
    assert np.all(b["event_type"] == VIEW)
    with pytest.raises(ValueError, match="event_probs"):
        generator("ysb", event_probs=(1.0, 1.0))


def test_cm_jobs_carry_their_attributes() -> None:
    gen = generator("cm", seed=2)
    b = gen.take(200_000)
    assert b["jobId"].min() >= JOB_ID_BASE
    assert set(np.unique(b["eventType"])) <= set(range(9))
    fails = np.mean(b["eventType"] == FAIL)
    assert 0.02 < fails < 0.06  # CM2's filter keeps a few percent
    assert set(np.unique(b["category"])) == {0, 1, 2, 3}
    assert b["priority"].min() >= 0 and b["priority"].max() <= 11
    for col in ("cpu", "ram", "disk"):
        assert b[col].min() > 0 and b[col].max() <= 1
    job = b["jobId"] - JOB_ID_BASE
    for col in ("userId", "category", "priority", "cpu", "constraints"):
        assert np.array_equal(b[col], gen.job_table[col][job]), col
    assert _top_share(b["jobId"], 0.01) > 0.3
    assert set(np.unique(b["constraints"])) == {0, 1}


def test_sg_plugs_and_meter_readings() -> None:
    gen = generator("sg", seed=4)
    b = gen.take(200_000)
    assert set(np.unique(b["property"])) == {0, 1}
    assert b["house"].min() >= 0 and b["house"].max() < 40
    assert np.any(b["household"] == 3)  # SG3 filters on it
    load = b["value"][b["property"] == 1]
    assert load.min() > 0 and 20 < np.median(load) < 100
    # Work is a meter: per plug, it never goes down over time.
    work = b["property"] == 0
    key = (b["house"][work].astype(np.int64) * 100 + b["household"][work]) * 100 + b["plug"][work]
    order = np.lexsort((b["timestamp"][work], key))
    k, v = key[order], b["value"][work][order]
    same = k[1:] == k[:-1]
    assert same.sum() > 1000 and np.all(v[1:][same] >= v[:-1][same])
    plugs = len(np.unique(key))
    assert plugs > 500
    assert _top_share(key, 0.1) > 0.15  # some plugs report more than others


def test_lrb_vehicles_move_and_some_segments_are_slow() -> None:
    gen = generator("lrb", seed=6, rate=200)
    b = gen.take(200 * 1800)  # 30 min of reports
    assert b["position"].min() >= 0 and b["position"].max() < SEGMENT_FEET * SEGMENTS
    assert set(np.unique(b["lane"])) == {0, 1, 2, 3, 4}
    assert set(np.unique(b["direction"])) == {0, 1}
    assert b["highway"].min() >= 0 and b["highway"].max() < 10
    # Each vehicle reports about every 30 s and moves the way its direction says.
    order = np.lexsort((b["timestamp"], b["vehicle"]))
    v, t, pos, d = (b[c][order] for c in ("vehicle", "timestamp", "position", "direction"))
    same = v[1:] == v[:-1]
    gaps = (t[1:] - t[:-1])[same]
    assert 20 <= np.median(gaps) <= 40
    moved = (pos[1:] - pos[:-1])[same]
    east = d[1:][same] == 0
    assert np.all(moved[east] >= 0) and np.all(moved[~east] <= 0)
    # LRB1's having avg(speed) < 40 keeps some (highway, direction, segment) but not most.
    seg = b["position"] // SEGMENT_FEET
    key = (b["highway"].astype(np.int64) * 2 + b["direction"]) * SEGMENTS + seg
    sums = np.bincount(key, weights=b["speed"])
    n = np.bincount(key)
    avg = sums[n > 20] / n[n > 20]
    assert 0.02 < np.mean(avg < 40) < 0.5


def test_batches_stay_within_memory_bounds() -> None:
    gen = generator("ysb", seed=1)
    chunk = 1 << 16
    tracemalloc.start()
    try:
        total = 0
        for batch in gen.batches(40 * chunk, chunk_rows=chunk):
            total += len(batch["ad_id"])
            del batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 40 * chunk
    # 40 chunks of 34 B/row would be 89 MB; a few chunks' worth may be alive at once.
    assert peak < 12 * chunk * gen.bytes_per_event()


# --- the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1000", 1000),
        ("1k", 1000),
        ("50M", 50_000_000),
        ("2.5m", 2_500_000),
        ("1G", 10**9),
        ("1_000", 1000),
        ("0", 0),
    ],
)
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["", "1x", "k", "-3", "1.5", "1.0001k"])
def test_parse_count_refuses(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_count(text)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_generate_writes_what_the_generator_makes(
    name: str, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{name}{suffix}"
    argv = ["stream", "generate", name, "--events", "20k", "--seed", "9", "-o", str(out)]
    assert main([*argv, "--chunk-rows", "7000", "--rate", "1k"]) == 0
    printed = capsys.readouterr().out
    gen = generator(name, seed=9, rate=1000)
    assert f"wrote 20,000 {name} rows" in printed
    assert f"{out.stat().st_size:,} bytes" in printed
    parts = list(io.read_batches(out, gen.schema, batch_rows=5000))
    assert [len(p[gen.time_column]) for p in parts] == [5000] * 4
    got = {c: np.concatenate([p[c] for p in parts]) for c in gen.schema}
    want = gen.take(20_000)
    for c in want:
        if want[c].dtype.kind == "f" and suffix == ".csv":
            assert np.allclose(got[c], want[c], rtol=1e-6), c  # CSV's shortest float text
        else:
            assert np.array_equal(got[c], want[c]), c
    if name == "ysb":
        ads = io.read_table(ads_path(out), ADS_SCHEMA)
        assert all(np.array_equal(ads[c], gen.ads[c]) for c in ADS_SCHEMA)
    else:
        assert not ads_path(out).exists()
    if suffix == ".parquet":
        meta = io.parquet_metadata(out)
        assert meta["wattspan.dataset"] == name and meta["wattspan.seed"] == "9"
        assert meta["wattspan.rate"] == "1000" and meta["wattspan.events"] == "20000"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_generate_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "generate", "ysb", "-n", "1k", "-o", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"wattspan: {tmp_path / 'x.txt'}: unknown file type '.txt'; use .parquet, .pq or .csv"
    ]
    assert not (tmp_path / "x.txt").exists()
    with pytest.raises(SystemExit) as exc:
        main(["stream", "generate", "ysb", "-n", "lots", "-o", str(tmp_path / "x.csv")])
    assert exc.value.code == 2
    assert "not a count: 'lots'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stream", "generate", "nope", "-n", "1k", "-o", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit):
        main(["stream"])  # a sub-subcommand is required
