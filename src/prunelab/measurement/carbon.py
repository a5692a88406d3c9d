"""Carbon: gCO2eq = energy in kWh x grid carbon intensity in gCO2eq/kWh.

Intensity comes from a number the user gives (best: their utility's or a live grid figure) or from the small offline
table below, by ISO 3166-1 alpha-3 country code.

Sources of the table: annual carbon intensity of electricity generation for 2021, as published by Our World in
Data (built on Ember and the Energy Institute's Statistical Review) and shipped by CodeCarbon in
`codecarbon/data/private_infra/global_energy_mix.json` (field `carbon_intensity`), rounded to whole grams. `WLD`,
the default, is the world average of 475 gCO2eq/kWh that CodeCarbon uses when the location is unknown (IEA, 2019).
Annual averages hide hourly and regional swings of a factor two or more; treat results as order-of-magnitude.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prunelab.errors import PrunelabError, did_you_mean

JOULES_PER_KWH = 3.6e6
WORLD = "WLD"

GRID_INTENSITY_G_PER_KWH: dict[str, float] = {
    WORLD: 475,
    "ARE": 462,
    "AUS": 531,
    "AUT": 148,
    "BEL": 157,
    "BRA": 159,
    "CAN": 128,
    "CHE": 47,
    "CHN": 544,
    "CZE": 406,
    "DEU": 365,
    "DNK": 221,
    "ESP": 194,
    "FIN": 146,
    "FRA": 67,
    "GBR": 268,
    "IDN": 623,
    "IND": 637,
    "IRL": 364,
    "ISL": 29,
    "ITA": 341,
    "JPN": 479,
    "KOR": 458,
    "MEX": 400,
    "NLD": 389,
    "NOR": 28,
    "NZL": 132,
    "POL": 660,
    "PRT": 219,
    "RUS": 360,
    "SAU": 571,
    "SGP": 488,
    "SWE": 46,
    "TUR": 430,
    "TWN": 573,
    "USA": 379,
    "ZAF": 716,
}


@dataclass(frozen=True)
class GridIntensity:
    """gCO2eq per kWh, with where the number came from."""

    g_per_kwh: float
    country: str | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_intensity(country: str | None = None, g_per_kwh: float | None = None) -> GridIntensity:
    """The user's number if given, else the table's value for `country`, else the world average."""
    if country is not None and g_per_kwh is not None:
        raise PrunelabError("give either a country or a grid intensity, not both")
    if g_per_kwh is not None:
        if g_per_kwh < 0:
            raise PrunelabError(f"grid intensity must be >= 0 gCO2eq/kWh, got {g_per_kwh}")
        return GridIntensity(float(g_per_kwh), None, "user")
    code = (country or WORLD).upper()
    if code not in GRID_INTENSITY_G_PER_KWH:
        raise did_you_mean(code, GRID_INTENSITY_G_PER_KWH, "country code (ISO 3166-1 alpha-3)")
    source = "world average (IEA 2019, CodeCarbon default)" if code == WORLD else "OWID/Ember 2021 annual average"
    return GridIntensity(float(GRID_INTENSITY_G_PER_KWH[code]), code, source)


def grams_co2eq(joules: float, g_per_kwh: float) -> float:
    """gCO2eq emitted by `joules` of electricity at `g_per_kwh`."""
    return joules / JOULES_PER_KWH * g_per_kwh
