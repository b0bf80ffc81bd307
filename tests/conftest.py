"""Shared fixtures. Real servers are started by the fixtures in their own modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wattspan.agent.receiver import OtlpHandler, OtlpReceiver

# Spark's Python workers run `python3` from PATH unless told otherwise; on a clean machine that
# interpreter has neither pyarrow nor this package, so point them (and the driver launched by
# spark-submit) at the interpreter running the tests.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "wattspan.db"


@pytest.fixture
def wattspan_cmd() -> list[str]:
    """The installed console script, run with this interpreter."""
    return [sys.executable, "-m", "wattspan"]


@pytest.fixture
def receiver(collector: OtlpHandler) -> Iterator[OtlpReceiver]:
    """An in-process OTLP/gRPC receiver on a free port, handing what it receives to the
    ``collector`` fixture, which each module using this one defines (its own handler)."""
    from wattspan.agent.receiver import OtlpReceiver  # grpc: only for the tests that use it

    with OtlpReceiver(collector, port=0) as r:  # stop(grace=1.0) on the way out
        yield r


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep tests away from the user's real store and state.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    for k in list(os.environ):
        if k.startswith("WATTSPAN_"):
            monkeypatch.delenv(k)
