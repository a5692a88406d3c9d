"""Energy and carbon of any block of work (a training run, a LoRA or distillation recovery), labelled like bench.

One protocol: the bench's meters (`energy.select_meter`: RAPL package zones, NVML or CodeCarbon's labelled power
model) and grid data (`carbon.grid_intensity`), read once around the block. `footprint(label, cfg)` meters a block
directly (api jobs, experiments); `metering(cfg)` installs it for every `prunelab._util.work_span` entered inside,
which is how training and pruning code, which may not import measurement, get their loops metered.

The record: `{"label", "seconds", "energy": {energy_source, method, is_estimate, scope, joules, kwh, overhead_s,
details, skipped_sources}, "carbon": {grid_intensity, country, region, source, year, g_co2eq, is_estimate}}`.
With `energy="off"` the joules and grams are None, the labels stay.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from prunelab._util import span_meter
from prunelab.config.bench import FootprintConfig
from prunelab.measurement.carbon import JOULES_PER_KWH, GridIntensity, grams_co2eq, grid_intensity
from prunelab.measurement.energy import EnergyReading, select_meter

__all__ = ["FootprintConfig", "footprint", "footprint_report", "intensity_fields", "metering"]


def intensity_fields(intensity: GridIntensity) -> dict[str, Any]:
    """The labels every carbon figure carries (bench, sweep points, training footprints)."""
    return {
        "grid_intensity": intensity.g_per_kwh,
        "country": intensity.country,
        "region": intensity.region,
        "intensity_source": intensity.source,
        "source": intensity.source,
        "year": intensity.year,
    }


def footprint_report(
    label: str,
    seconds: float,
    reading: EnergyReading | None,
    meter_info: dict[str, Any] | None,
    skipped: list[str],
    intensity: GridIntensity,
) -> dict[str, Any]:
    """The record of one metered block (see the module docstring)."""
    if reading is None or meter_info is None:
        energy: dict[str, Any] = {"energy_source": "off", "method": "off", "is_estimate": None, "joules": None,
                                  "kwh": None}  # fmt: skip
        grams = None
    else:
        energy = {
            **meter_info,
            "joules": reading.joules,
            "kwh": reading.joules / JOULES_PER_KWH,
            "overhead_s": reading.overhead_s,
            "details": reading.details,
            "skipped_sources": skipped,
        }
        grams = grams_co2eq(reading.joules, intensity.g_per_kwh)
    carbon = {**intensity_fields(intensity), "g_co2eq": grams, "is_estimate": energy["is_estimate"]}
    return {"label": label, "seconds": seconds, "energy": energy, "carbon": carbon}


def _checked(cfg: FootprintConfig | None, device: str) -> tuple[Any, GridIntensity]:
    cfg = cfg or FootprintConfig()
    intensity = grid_intensity(cfg.country, cfg.grid_intensity, cfg.region)  # a bad region fails before the work
    return cfg, intensity


@contextlib.contextmanager
def footprint(label: str, cfg: FootprintConfig | None = None, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Meter the block; the yielded dict receives the record when the block ends without an error."""
    cfg, intensity = _checked(cfg, device)
    meter, skipped = select_meter(cfg.energy, device, cpu_watts=cfg.cpu_watts)
    record: dict[str, Any] = {}
    started = time.perf_counter()
    if meter is not None:
        meter.start()
    yield record
    reading = meter.stop() if meter is not None else None
    info = meter.describe() if meter is not None else None
    record.update(footprint_report(label, time.perf_counter() - started, reading, info, skipped, intensity))


class metering:  # lower-case: used like a context manager function
    """`with metering(cfg):` meters every `work_span` inside the block with `cfg`. The settings are checked when
    this object is made (an unknown region or an explicitly requested counter that is unavailable fails before any
    work), so a job can make it first and enter it only around the part that trains. `records` collects the record
    of every span metered inside (filled as each span ends), for callers that total them (sweep points)."""

    def __init__(self, cfg: FootprintConfig | None = None) -> None:
        self.cfg, _ = _checked(cfg, "cpu")
        select_meter(self.cfg.energy, "cpu", cpu_watts=self.cfg.cpu_watts)
        self._stack = contextlib.ExitStack()
        self.records: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def _span(self, label: str, device: str) -> Iterator[dict[str, Any]]:
        with footprint(label, self.cfg, device) as record:
            self.records.append(record)
            yield record

    def __enter__(self) -> metering:
        self._stack.enter_context(span_meter(self._span))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
