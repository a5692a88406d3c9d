"""Energy and carbon of any block of work (a training run, a LoRA or distillation recovery), labelled like bench.

One protocol: the bench's meters (`energy.select_meter`: RAPL package zones, NVML or CodeCarbon's labelled power
model) and grid data (`carbon.grid_intensity`), read once around the block. `footprint(label, cfg)` meters a block
directly (api jobs, experiments); `metering(cfg)` installs it for every `prunelab._util.work_span` entered inside,
which is how training and pruning code, which may not import measurement, get their loops metered.

The record: `{"label", "seconds", "energy": {energy_source, method, is_estimate, scope, joules, kwh, overhead_s,
details, skipped_sources}, "carbon": {grid_intensity, country, region, source, year, g_co2eq, is_estimate}}`.
With `energy="off"` the joules and grams are None, the labels stay.

Beside a training footprint, the inference energy of the models it made: `payback(training, dense, pruned)` puts
the training run's labelled joules and grams next to the dense and pruned models' joules per 1,000 generated tokens
(records of `measurement.bench.inference_energy`) and the break-even, defined once in `break_even_tokens`:

    break_even_tokens = training joules / (dense joules per generated token - pruned joules per generated token)

the generated tokens after which the energy the pruned model saves per token has repaid the training; None
("never") when the pruned model is not cheaper per token. Pure arithmetic on recorded numbers (no torch), so the
sweep report computes its break-even column with the same function.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

from prunelab._util import span_meter
from prunelab.config.bench import FootprintConfig
from prunelab.measurement.carbon import JOULES_PER_KWH, GridIntensity, grams_co2eq, grid_intensity
from prunelab.measurement.energy import EnergyReading, select_meter

__all__ = ["FootprintConfig", "break_even_tokens", "footprint", "footprint_report", "intensity_fields", "metering",
           "payback"]  # fmt: skip

BREAK_EVEN_DEFINITION = (
    "break_even_tokens = training joules / (dense - pruned joules per generated token): the generated tokens after "
    "which the energy saved per token repays the training; none ('never') when the pruned model is not cheaper"
)


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


# ---------------------------------------------------------------- training beside inference


def break_even_tokens(training_joules: float, dense_j_per_token: float, pruned_j_per_token: float) -> float | None:
    """Generated tokens after which the pruned model's per-token energy saving repays `training_joules`;
    None ("never") when the pruned model is not cheaper per token (saving <= 0). Inputs must be finite and
    >= 0 (a negative or NaN joule figure is a measurement artefact the caller must not turn into a number)."""
    for name, v in (("training", training_joules), ("dense", dense_j_per_token), ("pruned", pruned_j_per_token)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} energy must be a finite number >= 0 joules, got {v}")
    saving = dense_j_per_token - pruned_j_per_token
    if saving <= 0:
        return None
    return training_joules / saving


def _training_fields(training: dict[str, Any]) -> dict[str, Any]:
    energy, carbon = training.get("energy") or {}, training.get("carbon") or {}
    keep = ("grid_intensity", "country", "region", "source", "year")
    return {
        "joules": energy.get("joules"),
        "kwh": energy.get("kwh"),
        "g_co2eq": carbon.get("g_co2eq"),
        "energy_source": energy.get("energy_source"),
        "method": energy.get("method"),
        "is_estimate": energy.get("is_estimate"),
        "carbon": {k: carbon.get(k) for k in keep},
    }


def _per_token(record: dict[str, Any] | None) -> float | None:
    if not record or record.get("j_per_1k_tokens") is None:
        return None
    return float(record["j_per_1k_tokens"]) / 1000


def payback(
    training: dict[str, Any] | None,
    dense: dict[str, Any] | None,
    pruned: dict[str, Any] | None,
    missing: str | None = None,
) -> dict[str, Any]:
    """The training footprint (`{"energy", "carbon"}` of a metered span) beside the inference energy of the dense
    and pruned models (records of `measurement.bench.inference_energy`, or None when not measured) and the
    break-even. `missing`: why inference was not measured, when the caller knows (shown instead of a number).

    `status`: `repays` (after `break_even_tokens`), `never` (the pruned model is not cheaper per token),
    `unresolved` (`within_noise`: the per-token difference is no larger than `noise_fraction`, the largest
    relative spread of either model's repeated measurements, `j_rel_spread` between rounds or decode speed's
    relative IQR; `break_even_tokens` is then only the point estimate), or `unknown` (something was not measured:
    `missing` says what). `notes` flag mixed energy sources and zeros run through dense kernels."""
    out: dict[str, Any] = {
        "training": _training_fields(training or {}),
        "dense": dense,
        "pruned": pruned,
        "saving_j_per_1k_tokens": None,
        "saving_fraction": None,
        "break_even_tokens": None,
        "status": "unknown",
        "within_noise": None,
        "noise_fraction": None,
        "missing": missing,
        "definition": BREAK_EVEN_DEFINITION,
        "notes": [],
    }
    train_j = out["training"]["joules"]
    e_dense, e_pruned = _per_token(dense), _per_token(pruned)
    if missing is None:
        if train_j is None:
            missing = "the training energy was not metered (--energy off?)"
        elif e_dense is None or e_pruned is None:
            what = " and ".join(n for n, e in (("dense", e_dense), ("pruned", e_pruned)) if e is None)
            missing = f"the {what} model's inference energy was not measured"
        elif e_dense <= 0 or e_pruned < 0:
            missing = "a per-token inference energy came out <= 0 (the measurement is too short to resolve it)"
    out["missing"] = missing
    if missing is not None:
        return out
    assert train_j is not None and e_dense is not None and e_pruned is not None
    saving = e_dense - e_pruned
    out["saving_j_per_1k_tokens"] = saving * 1000
    out["saving_fraction"] = saving / e_dense
    out["break_even_tokens"] = break_even_tokens(float(train_j), e_dense, e_pruned)
    out["status"] = "never" if out["break_even_tokens"] is None else "repays"
    spreads = [r.get(k) for r in (dense, pruned) if r for k in ("j_rel_spread", "decode_rel_iqr")]
    spreads = [float(s) for s in spreads if s is not None]
    if spreads:
        out["noise_fraction"] = max(spreads)
        out["within_noise"] = abs(saving / e_dense) <= out["noise_fraction"]
        if out["within_noise"]:
            out["status"] = "unresolved"
    if any("dense kernels" in str(n) for n in (pruned or {}).get("notes") or []):
        out["notes"].append("the pruned model's zeros run through dense kernels: no saving per token is expected "
                            "on this runtime (see the bench notes)")  # fmt: skip
    sources = {r.get("energy_source") for r in (dense, pruned) if r}
    if len(sources) > 1 or (sources and out["training"]["energy_source"] not in sources):
        inferred = ", ".join(sorted(map(str, sources)))
        out["notes"].append(
            f"training energy from {out['training']['energy_source']}, inference from {inferred}: different "
            "meters and scopes, so the break-even mixes them"
        )
    return out
