"""Carbon: gCO2eq = energy in kWh x grid carbon intensity in gCO2eq/kWh.

Intensity comes from a number the user gives (best: their utility's or a live grid figure) or from CodeCarbon's
offline data (MIT, carried in `data/codecarbon/`, see the README there), and every figure says its `source` and
`year`:

- countries (ISO 3166-1 alpha-3 code or English name, 213 entries): `carbon_intensity` of `global_energy_mix.json`,
  Our World in Data's annual figure built on Ember and the Energy Institute (2022 or 2023 for almost all);
- regions (`region`, an ISO 3166-2 code such as `US-TX`, `CA-QC`, `CN-BJ`, a Nordic bidding zone `SE3`, `NO1`,
  `FI`, or a state/province code or name together with `country`):
  US states: EPA eGRID2023 total output emission rate, lbs CO2eq/MWh x 0.45359237 = g/kWh;
  Canadian provinces: 2023 generation mix, share of coal, petroleum and natural gas x CodeCarbon's per-fuel
  factors (995.725971, 816.6885263, 743.8415916 g/kWh; every other source counted at 0, as CodeCarbon does);
  Chinese provinces: MEE/NBS 2023 factors (CO2 only); Swedish/Norwegian bidding zones: ENTSO-E 2025 mix;
- `WLD`, the default: the world average of 475 gCO2eq/kWh that CodeCarbon uses when the location is unknown
  (IEA Global Energy & CO2 Status Report 2019).

Annual averages hide hourly and regional swings of a factor two or more; treat results as order-of-magnitude.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from prunelab.errors import PrunelabError, did_you_mean
from prunelab.measurement.cpu_power import data_file

JOULES_PER_KWH = 3.6e6
WORLD = "WLD"
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
FUEL_G_PER_KWH = {"coal": 995.725971, "petroleum": 816.6885263, "naturalGas": 743.8415916}
# ISO 3166-2:CA codes (the data file keys provinces by name only).
CANADA_CODES = {
    "AB": "alberta",
    "BC": "british columbia",
    "MB": "manitoba",
    "NB": "new brunswick",
    "NL": "newfoundland and labrador",
    "NS": "nova scotia",
    "NT": "northwest territories",
    "NU": "nunavut",
    "ON": "ontario",
    "PE": "prince edward island",
    "QC": "quebec",
    "SK": "saskatchewan",
    "YT": "yukon",
}
NORDIC = {"SWE": ("SE1", "SE2", "SE3", "SE4"), "NOR": ("NO1", "NO2", "NO3", "NO4", "NO5"), "FIN": ("FI",)}
_ISO2 = {"US": "USA", "CA": "CAN", "CN": "CHN", "SE": "SWE", "NO": "NOR", "FI": "FIN"}
_CHINA_SUFFIX = re.compile(r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$")


@dataclass(frozen=True)
class GridIntensity:
    """gCO2eq per kWh, with where the number came from and the year it describes."""

    g_per_kwh: float
    country: str | None
    source: str
    year: int | None = None
    region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(name: str) -> Any:
    return json.loads(data_file(name).read_text(encoding="utf-8"))


@functools.cache
def countries() -> dict[str, GridIntensity]:
    """ISO alpha-3 code -> intensity, for every country of CodeCarbon's global energy mix (plus WLD)."""
    world = _load("carbon_intensity_per_source.json")["world_average"]
    out = {WORLD: GridIntensity(float(world), WORLD, "world average (IEA 2019, CodeCarbon default)", 2019)}
    for code, row in _load("global_energy_mix.json").items():
        if row.get("carbon_intensity") is not None:
            name = row.get("country_name", code)
            source = f"Our World in Data / Ember {row.get('year')} annual average, {name} (CodeCarbon data)"
            out[code.upper()] = GridIntensity(float(row["carbon_intensity"]), code.upper(), source, row.get("year"))
    return out


@functools.cache
def regions() -> dict[str, GridIntensity]:
    """ISO 3166-2 style region code -> intensity (US states, Canadian provinces, Chinese provinces, Nordic zones)."""
    out: dict[str, GridIntensity] = {}
    usa = _load("usa_emissions.json")
    us_src = usa.get("_source", {})
    for name, row in usa.items():
        if name.startswith("_") or not isinstance(row, dict) or "regionCode" not in row or name == "usa":
            continue
        code = f"US-{row['regionCode'].upper()}"
        source = f"{us_src.get('name', 'EPA eGRID')}, {name.title()} (CodeCarbon data)"
        g = row["emissions"] * LBS_PER_MWH_TO_G_PER_KWH
        out[code] = GridIntensity(g, "USA", source, us_src.get("year"), code)
    canada = _load("canada_energy_mix.json")
    for code, name in CANADA_CODES.items():
        mix = canada[name]
        g = sum(mix.get(fuel, 0.0) / mix["total"] * factor for fuel, factor in FUEL_G_PER_KWH.items())
        source = f"generation mix x per-fuel factors, {name.title()} (CodeCarbon data, 2023)"
        out[f"CA-{code}"] = GridIntensity(g, "CAN", source, 2023, f"CA-{code}")
    china = _load("china_provincial_emissions.json")
    meta = china.get("metadata", {})
    for code, row in china["data"].items():
        source = f"MEE/NBS {meta.get('year', row.get('year'))} provincial factor (CO2 only), {row['description']}"
        out[code.upper()] = GridIntensity(float(row["emission_factor"]), "CHN", source, row.get("year"), code.upper())
    for code, row in _load("nordic_emissions.json")["data"].items():
        country = next(c for c, zones in NORDIC.items() if code in zones)
        source = f"ENTSO-E generation mix, {row['description']} (CodeCarbon data)"
        out[code.upper()] = GridIntensity(float(row["emission_factor"]), country, source, row.get("year"), code.upper())
    return out


@functools.cache
def _region_names() -> dict[tuple[str, str], str]:
    """(country, lower-case state/province name or short code) -> region code."""
    names: dict[tuple[str, str], str] = {}
    for name, row in _load("usa_emissions.json").items():
        if isinstance(row, dict) and "regionCode" in row and name != "usa":
            names[("USA", name.lower())] = f"US-{row['regionCode'].upper()}"
            names[("USA", row["regionCode"].lower())] = f"US-{row['regionCode'].upper()}"
    for code, name in CANADA_CODES.items():
        names[("CAN", name)] = names[("CAN", code.lower())] = f"CA-{code}"
    for code, row in _load("china_provincial_emissions.json")["data"].items():
        names[("CHN", code.split("-", 1)[1].lower())] = code.upper()
        for alias in row.get("names", []):
            names[("CHN", alias.lower())] = code.upper()
    return names


def _country_code(country: str) -> str:
    code = country.strip().upper()
    table = countries()
    if code in table:
        return code
    by_name = {row.get("country_name", "").lower(): c.upper() for c, row in _load("global_energy_mix.json").items()}
    if country.strip().lower() in by_name:
        return by_name[country.strip().lower()]
    raise did_you_mean(code, table, "country code (ISO 3166-1 alpha-3)")


def _region_code(region: str, country: str | None) -> str:
    """Resolve what the user typed to a key of `regions()`."""
    table = regions()
    raw = " ".join(region.strip().split())
    code = raw.upper()
    prefix, sep, rest = code.partition("-")
    if sep and prefix in _ISO2:  # US-TX, CA-QC, CN-BJ
        code = f"{prefix}-{rest}"
    if code in table:
        found = table[code]
    else:
        if country is None:
            raise did_you_mean(code, table, "region (give an ISO 3166-2 code like US-TX or CA-QC, or --country too)")
        name = _CHINA_SUFFIX.sub("", raw.lower()) if country == "CHN" else raw.lower()
        key = _region_names().get((country, name))
        if key is None:
            known = sorted(k for k, g in table.items() if g.country == country)
            if not known:
                raise PrunelabError(
                    f"no sub-national grid data for {country}; regions exist for USA, CAN, CHN, SWE, NOR, FIN"
                )
            raise did_you_mean(code, known, f"region of {country}")
        found, code = table[key], key
    if country is not None and found.country != country:
        raise PrunelabError(f"region '{region}' is in {found.country}, not {country}")
    return code


def grid_intensity(
    country: str | None = None, g_per_kwh: float | None = None, region: str | None = None
) -> GridIntensity:
    """The user's number if given, else the region's, else the country's, else the world average.

    `region` is what the CLI's `--region` passes: an ISO 3166-2 code (`US-TX`, `CA-QC`, `CN-BJ`), a Nordic bidding
    zone (`SE3`, `NO1`, `FI`), or a state/province code or name when `country` is given (`TX`, `texas`, `quebec`).

    Precedence: an explicit `g_per_kwh` wins over any table (the user's utility or a live figure is better than an
    annual average) and is recorded with source "user" and no year; a country/region given with it is still
    checked (a typo fails) and kept as the location the number describes.
    """
    if g_per_kwh is not None and (not math.isfinite(g_per_kwh) or g_per_kwh < 0):
        raise PrunelabError(f"grid intensity must be a finite number >= 0 gCO2eq/kWh, got {g_per_kwh}")
    code = _country_code(country) if country is not None else None
    found = regions()[_region_code(region, code)] if region is not None else countries()[code or WORLD]
    if g_per_kwh is not None:
        located = country is not None or region is not None
        return GridIntensity(float(g_per_kwh), found.country if located else None, "user", None, found.region)
    return found


def grams_co2eq(joules: float, g_per_kwh: float) -> float:
    """gCO2eq emitted by `joules` of electricity at `g_per_kwh`."""
    return joules / JOULES_PER_KWH * g_per_kwh
