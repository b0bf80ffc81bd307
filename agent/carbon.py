"""Grams of CO2-equivalent from energy: ``g = kWh * PUE * intensity``.

The carbon intensity (g CO2e per kWh of electricity) is, in order of preference: a figure
given outright (``carbon.intensity_g_per_kwh``, ``--carbon-intensity``), the annual average
of a country (``carbon.country``, ``--country``; ISO 3166 alpha-2 or alpha-3 code) from the
table in ``carbon_intensity.csv`` beside this module (Our World in Data's *Carbon intensity
of electricity*, from Ember's data; the file says which year), or :data:`DEFAULT_INTENSITY`.
PUE (power usage effectiveness, >= 1) scales the measured energy up to what the building
drew for it: 1.0 (the default) for a machine whose cooling is not charged to it.

An annual average is what CodeCarbon, the Green Algorithms calculator and the ML CO2 Impact
calculator use without a live grid feed; the hour-by-hour intensity of a grid varies by a
factor of two or more, so every figure is shown with the intensity it was computed with
(:meth:`Intensity.label`), never bare.
"""

from __future__ import annotations

from wattspan.agent.named import record

# ``wattspan run`` resolves its intensity before it starts its command: records (named
# tuples without collections, agent/named.py) rather than dataclasses, and no typing, keep
# this module's import to a fraction of a millisecond.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: g CO2e/kWh when no intensity and no country is configured: the world average of
#: electricity generation in the IEA's 2019 figures, the one CodeCarbon also falls back to.
DEFAULT_INTENSITY = 475.0
DEFAULT_SOURCE = "world average (IEA 2019)"
JOULES_PER_KWH = 3.6e6


class Country(record("Country", "alpha2 alpha3 name g_per_kwh year")):
    """A row of the table: ISO codes, name, g CO2e/kWh and the year of the figure."""

    __slots__ = ()


class Intensity(record("Intensity", "g_per_kwh source pue country", defaults=(1.0, ""))):
    """The carbon intensity a figure is computed with, and where it came from."""

    __slots__ = ()
    g_per_kwh: float
    source: str
    pue: float
    country: str

    def grams(self, joules: float | None) -> float | None:
        """g CO2e of ``joules`` of energy, PUE applied (None stays None)."""
        if joules is None:
            return None
        return joules / JOULES_PER_KWH * self.pue * self.g_per_kwh

    def label(self) -> str:
        """``475 g/kWh, world average (IEA 2019), PUE 1.0``: what every CO2e figure is shown
        with."""
        return f"{self.g_per_kwh:g} g/kWh, {self.source}, PUE {self.pue:g}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Intensity | None:
        """An intensity stored with a run's summary, or None when it has none."""
        try:
            return cls(
                float(d["g_per_kwh"]),
                str(d.get("source", "")),
                float(d.get("pue", 1.0)),
                str(d.get("country", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


class CarbonError(ValueError):
    """A country code that is not in the table, or an intensity or PUE out of range."""


_TABLE: list[dict[str, Country]] = []


def countries() -> dict[str, Country]:
    """The table, keyed by upper-case alpha-2 and alpha-3 code (read once)."""
    if _TABLE:
        return _TABLE[0]
    # Imported here: ``wattspan run`` resolves its intensity before the command starts, and
    # most runs never read the table.
    import csv
    import io
    from importlib import resources

    text = resources.files("wattspan.agent").joinpath("carbon_intensity.csv").read_text("utf-8")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    out: dict[str, Country] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        c = Country(
            row["alpha2"].upper(),
            row["alpha3"].upper(),
            row["country"],
            float(row["g_per_kwh"]),
            int(row["year"]),
        )
        out[c.alpha2] = out[c.alpha3] = c
    _TABLE.append(out)
    return out


def country(code: str) -> Country:
    """The table's row for an ISO 3166 alpha-2 or alpha-3 code (any case), or a
    :class:`CarbonError` naming the nearest codes and names."""
    table = countries()
    key = code.strip().upper()
    if key in table:
        return table[key]
    by_name = {c.name.upper(): c for c in table.values()}
    if key in by_name:
        return by_name[key]
    import difflib

    near = difflib.get_close_matches(key, [*table, *by_name], n=3, cutoff=0.5)
    hint = ", ".join(
        dict.fromkeys(table[n].alpha2 if n in table else by_name[n].alpha2 for n in near)
    )
    more = f"; did you mean {hint}?" if hint else ""
    raise CarbonError(
        f"no carbon intensity for country {code!r}{more} "
        f"(the table has {len({c.alpha2 for c in table.values()})} countries; "
        "give --carbon-intensity G for others)"
    )


def resolve(
    intensity: float | None = None, country_code: str | None = None, pue: float = 1.0
) -> Intensity:
    """The intensity to use: ``intensity`` if given, else ``country_code``'s, else the
    default (module doc)."""
    if not 1.0 <= pue <= 5.0:
        raise CarbonError(f"PUE must be between 1 and 5, got {pue:g}")
    if intensity is not None:
        if not 0.0 <= intensity <= 2000.0:
            raise CarbonError(f"carbon intensity must be 0 to 2000 g/kWh, got {intensity:g}")
        return Intensity(float(intensity), "given", pue)
    if country_code:
        c = country(country_code)
        source = f"{c.name} {c.year} average (Our World in Data / Ember)"
        return Intensity(c.g_per_kwh, source, pue, c.alpha2)
    return Intensity(DEFAULT_INTENSITY, DEFAULT_SOURCE, pue)


def from_config(section: dict[str, Any]) -> Intensity:
    """The ``[carbon]`` config section's intensity (keys ``intensity_g_per_kwh``,
    ``country``, ``pue``)."""
    return resolve(
        section.get("intensity_g_per_kwh"), section.get("country") or None, section.get("pue", 1.0)
    )


def annotate(summary: dict[str, Any], intensity: Intensity) -> dict[str, Any]:
    """Adds the CO2e figures of a run summary (in place, and returns it):
    ``co2e_grams`` from node (primary domains) plus GPU energy, ``process_co2e_grams`` from
    the process share plus GPU energy (the GPU has no per-process split), and ``carbon``,
    the intensity used."""
    node = summary.get("node_energy_joules")
    gpu = sum(g["joules"] for g in summary.get("gpus") or [] if g.get("joules") is not None)
    have_gpu = any(g.get("joules") is not None for g in summary.get("gpus") or [])
    if node is not None or have_gpu:
        summary["co2e_grams"] = intensity.grams((node or 0.0) + gpu)
    proc = summary.get("process_energy_joules")
    if proc is not None:
        summary["process_co2e_grams"] = intensity.grams(proc + gpu)
    summary["carbon"] = intensity.to_dict()
    return summary
