"""pyproject: the licence as an SPDX expression (setuptools' ``project.license`` table is
deprecated, a BuildBackendWarning until 2027-02-18, then an error), and the carbon table
shipped as package data."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_and_setuptools_supports_it() -> None:
    meta = tomllib.loads(PYPROJECT.read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    requires = meta["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert m is not None and int(m.group(1)) >= 77  # PEP 639 expressions from 77.0


def test_carbon_table_is_package_data() -> None:
    meta = tomllib.loads(PYPROJECT.read_text())
    assert "carbon_intensity.csv" in meta["tool"]["setuptools"]["package-data"]["wattspan.agent"]
    text = resources.files("wattspan.agent").joinpath("carbon_intensity.csv").read_text()
    assert "ourworldindata.org" in text and text.count("\n") > 60
