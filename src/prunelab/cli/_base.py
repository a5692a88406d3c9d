"""Shared CLI machinery: the parser that exits 2 on bad input, help that shows every default, and options built
from the typed configs (`add_field`), so a flag's default, type, choices and help are the config field's."""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel

from prunelab.config.bench import FOOTPRINT_FIELDS, FootprintConfig, InferenceEnergyConfig
from prunelab.config.models import ModelConfig
from prunelab.errors import did_you_mean

_FROM_FIELD: Any = object()


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"prunelab: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A value outside `choices` gets the project's did-you-mean message (`--method wandaa` -> 'wanda')."""
        if action.choices is not None and value not in action.choices:
            what = (action.dest or "value").replace("_", " ")
            self.error(str(did_you_mean(str(value), map(str, action.choices), what)))


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if isinstance(action, argparse._StoreFalseAction):
            return f"{text} (default: on)"
        default = action.default
        shown = "none" if default is None or default == [] else " ".join(map(str, default)) if isinstance(
            default, list) else str(default)  # fmt: skip
        return f"{text} (default: {shown.replace('%', '%%')})"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None was allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _number_or(members: tuple[Any, ...]) -> Any:
    """argparse type of a `float | Literal[...]` field: the words as given, anything else must be a number."""
    words = [w for m in members if get_origin(m) is Literal for w in get_args(m)]

    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or {' or '.join(words)}, got '{text}'") from None

    return parse


def add_field(
    p: Any, model: type[BaseModel], name: str, flag: str | None = None, default: Any = _FROM_FIELD, **kwargs: Any
) -> argparse.Action:
    """An option for `model.name`: type, choices (a Literal), nargs (a list), default and help from the field."""
    info = model.model_fields[name]
    annotation, _ = _unwrap(info.annotation)
    spec: dict[str, Any] = {"dest": name, "help": info.description or name.replace("_", " ")}
    if get_origin(annotation) is list:
        spec["nargs"] = "+"
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        spec["choices"] = list(get_args(annotation))
        annotation = type(spec["choices"][0])
    elif get_origin(annotation) in (Union, types.UnionType):  # a number or a word: `float | Literal["auto"]`
        spec["type"] = _number_or(get_args(annotation))
    if annotation is bool:
        spec["action"] = "store_true"
    elif annotation in (int, float):
        spec["type"] = annotation
    spec["default"] = info.get_default(call_default_factory=True) if default is _FROM_FIELD else default
    spec.update(kwargs)
    return p.add_argument(flag or f"--{name.replace('_', '-')}", **spec)


def model_args(p: argparse.ArgumentParser, device_map: bool = False, runtime: bool = False) -> None:
    """--model, --dtype, --device (and --device-map, --runtime), from `ModelConfig`; --json."""
    optional = [*(["device_map"] if device_map else []), *(["runtime"] if runtime else [])]
    for name in ("model", "dtype", "device", *optional):
        add_field(p, ModelConfig, name)
    p.add_argument("--json", dest="json_path", default=None, help="write the machine-readable report here")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=getattr(args, "device_map", None),
        runtime=getattr(args, "runtime", "torch"),
    )


def values(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    """The parsed values of these fields, as a config's keyword arguments."""
    return {name: getattr(args, name) for name in names}


def footprint_args(p: argparse.ArgumentParser, what: str) -> None:
    """--energy, --country, --region, --grid-intensity, --cpu-watts (bench's fields) for the footprint of `what`."""
    group = p.add_argument_group(f"energy and carbon of {what} (as in `prunelab bench`)")
    for name in FOOTPRINT_FIELDS:
        add_field(group, FootprintConfig, name)


def footprint_config(args: argparse.Namespace) -> Any:
    from prunelab.config.base import build

    return build(FootprintConfig, values(args, FOOTPRINT_FIELDS), "energy/carbon settings")


def inference_args(p: argparse.ArgumentParser, what: str) -> None:
    """--[no-]inference-energy and the length of that short decode (InferenceEnergyConfig), beside `what`."""
    group = p.add_argument_group(f"inference energy beside {what}: the break-even (full protocol: `prunelab bench`)")
    for name in InferenceEnergyConfig.model_fields:
        kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction} if name == "inference_energy" else {}
        add_field(group, InferenceEnergyConfig, name, **kwargs)


def inference_config(args: argparse.Namespace) -> Any:
    from prunelab.config.base import build

    return build(InferenceEnergyConfig, values(args, InferenceEnergyConfig.model_fields), "inference energy settings")
