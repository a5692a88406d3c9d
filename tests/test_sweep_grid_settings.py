"""A sweep grid entry is a prune config plus lists of values to vary: every prune option is sweepable, `--plan`
prints the resolved points without loading a model, and the sweep's sections share the configs' definitions."""

from __future__ import annotations

import pytest

from prunelab.cli import main
from prunelab.config import BenchConfig, PruneConfig
from prunelab.errors import PrunelabError
from prunelab.pruning import METHODS
from prunelab.sweep import expand_grid, parse_sweep_yaml
from prunelab.sweep.config import AXES, GRID_SETTINGS, Measurement
from prunelab.sweep.grid import varying_settings

# A value different from the default for every PruneConfig field. A new field without one here fails
# `test_every_prune_option_is_sweepable`: give it a sample, and make sure a grid entry can set it.
SAMPLES = {
    "sparsity": 0.3,
    "pattern": "2:4",
    "targets": ["mlp"],
    "ignore": ["re:down_proj$"],
    "calib": "somewhere.txt",
    "calib_samples": 7,
    "calib_seqlen": 48,
    "calib_batch_size": 2,
    "seed": 5,
    "allocation": "owl",
    "owl_lambda": 0.04,
    "owl_m": 3.0,
    "alpha_eps": 0.3,
    "options": {"scope": "global"},
    "stages": ["dsnot"],
    "dsnot_cycles": 7,
    "dsnot_threshold": 0.01,
    "reconstruct_steps": 3,
    "reconstruct_lr": 1e-3,
    "reconstruct_scope": "separate",
    "reconstruct_target": "model",
}


def _points(grid: str):
    return expand_grid(parse_sweep_yaml(f"grid:\n{grid}"))


@pytest.mark.parametrize("field", [f for f in PruneConfig.model_fields if f != "method"])
def test_every_prune_option_is_sweepable(field: str) -> None:
    assert field in SAMPLES, f"PruneConfig.{field} has no sample value: add one, and let a grid entry set it"
    value = SAMPLES[field]
    assert value != PruneConfig.model_fields[field].get_default(call_default_factory=True)
    key = AXES.get(field, field)
    assert key in GRID_SETTINGS or key in AXES.values()
    entry = {"method": "magnitude", "sparsities": [0.5], key: [value] if key in AXES.values() else value}
    if field == "pattern":
        entry.pop("sparsities")
    if field in ("allocation", "pattern"):
        entry["options"] = {}
    import json

    points = _points(f"  - {json.dumps(entry)}\n")
    assert len(points) == 2
    assert points[1].config["prune"][field] == value


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_option_is_sweepable(method: str) -> None:
    options = METHODS[method].Options.model_fields
    for name, info in options.items():
        default = info.get_default(call_default_factory=True)
        entry = f"  - {{method: {method}, sparsities: [0.3], options: {{{name}: [{default!r}]}}}}\n"
        entry = entry.replace("None", "null")
        if name == "target":
            entry = entry.replace("sparsities: [0.3]", "sparsities: [0.3], structured_targets: [mlp]")
        try:
            points = _points(entry.replace("'", '"').replace("True", "true").replace("False", "false"))
        except PrunelabError as e:  # a value a method refuses (no tracker here ...) is still a value it was given
            assert "grid setting" not in str(e) and "Extra inputs" not in str(e), e
            continue
        assert points[1].config["prune"]["options"][name] == default


def test_any_option_given_a_list_varies() -> None:
    points = _points("  - {method: wanda, allocation: owl, owl_lambda: [0.04, 0.12], sparsities: [0.5, 0.6]}\n")
    prune = [p.config["prune"] for p in points[1:]]
    assert [(p["owl_lambda"], p["sparsity"]) for p in prune] == [(0.04, 0.5), (0.04, 0.6), (0.12, 0.5), (0.12, 0.6)]
    assert [p.label for p in points[1:]] == [
        "wanda owl owl_lambda=0.04 50%",
        "wanda owl owl_lambda=0.04 60%",
        "wanda owl owl_lambda=0.12 50%",
        "wanda owl owl_lambda=0.12 60%",
    ]
    assert len({p.series for p in points[1:]}) == 2  # one line per owl_lambda in the plots
    assert varying_settings(points) == ["sparsity", "owl_lambda"]
    # A list-typed field varies when given a list of lists; a plain list is its value.
    points = _points("  - {method: magnitude, sparsities: [0.5], targets: [[mlp], [self_attn]]}\n")
    assert [p.config["prune"]["targets"] for p in points[1:]] == [["mlp"], ["self_attn"]]
    points = _points("  - {method: magnitude, sparsities: [0.5], targets: [mlp]}\n")
    assert [p.config["prune"]["targets"] for p in points[1:]] == [["mlp"]]


def test_a_grid_setting_overrides_the_shared_calibration() -> None:
    grid = "grid:\n  - {method: wanda, sparsities: [0.5], calib_samples: [4, 16]}\n"
    cfg = parse_sweep_yaml("calibration: {samples: 8}\n" + grid)
    assert [p.config["prune"]["calib_samples"] for p in expand_grid(cfg)[1:]] == [4, 16]
    cfg = parse_sweep_yaml("calibration: {samples: 8}\ngrid:\n  - {method: wanda, sparsities: [0.5]}\n")
    assert expand_grid(cfg)[1].config["prune"]["calib_samples"] == 8


def test_bad_values_name_the_entry() -> None:
    with pytest.raises(PrunelabError, match=r"sweep.yaml:2: grid\[0\]: wanda owl_lambda=2 50%: .*owl_lambda"):
        _points("  - {method: wanda, owl_lambda: [2], sparsities: [0.5]}\n")


def test_sweep_sections_share_the_config_definitions() -> None:
    # grid_intensity: one bound (>= 0) for `prunelab bench` and a sweep's measurement section.
    assert BenchConfig(grid_intensity=0).grid_intensity == 0
    assert Measurement(grid_intensity=0).grid_intensity == 0
    for bad in (-1,):
        with pytest.raises(ValueError):
            BenchConfig(grid_intensity=bad)
        with pytest.raises(ValueError):
            Measurement(grid_intensity=bad)
    assert Measurement.model_fields["grid_intensity"].metadata == BenchConfig.model_fields["grid_intensity"].metadata


def test_plan_prints_points_without_loading_a_model(tmp_path, capsys, monkeypatch) -> None:
    import prunelab.models

    def no_load(*args, **kwargs):
        raise AssertionError("--plan must not load a model")

    monkeypatch.setattr(prunelab.models, "load_model", no_load)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("grid:\n  - {method: wanda, allocation: owl, owl_lambda: [0.04, 0.12], sparsities: [0.5]}\n")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 points (0 already done); varying: owl_lambda"
    assert len(out) == 4
    assert "wanda owl owl_lambda=0.12 50%" in out[3] and "owl_lambda=0.12" in out[3] and "todo" in out[3]
    assert not (tmp_path / "out").exists()  # nothing written
