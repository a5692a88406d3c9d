"""The strict base model and the one function that turns pydantic's report into a one-line PrunelabError."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import PydanticUndefined

from prunelab.errors import PrunelabError


class StrictModel(BaseModel):
    """Unknown keys are errors, not silently ignored settings; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


def build(model_cls: type[BaseModel], data: dict[str, Any], what: str) -> Any:
    """Validate a config dict, turning pydantic's report into one line per problem."""
    try:
        return model_cls(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or what}: {err['msg']}" for err in e.errors())
        raise PrunelabError(f"invalid {what}: {problems}") from e


def field_help(model_cls: type[BaseModel], name: str) -> str:
    """A field's description, as the CLI shows it (the CLI adds the default)."""
    return model_cls.model_fields[name].description or name.replace("_", " ")


def section(
    name: str,
    doc: str,
    source: type[BaseModel],
    fields: dict[str, str],
    defaults: dict[str, Any] | None = None,
    annotations: dict[str, Any] | None = None,
    extra: dict[str, tuple[Any, Any]] | None = None,
) -> type[StrictModel]:
    """A config section whose fields are `source`'s fields under other keys (`fields`: key -> source field).

    Constraints and descriptions come from `source`, so they are defined once; `defaults` and `annotations`
    override them where a section deliberately differs (the sweep measures every point with lighter defaults).
    """
    defaults, annotations = defaults or {}, annotations or {}
    spec: dict[str, Any] = {}
    for key, src in fields.items():
        info = copy.copy(source.model_fields[src])
        if key in defaults:
            value = defaults[key]
            info.default = PydanticUndefined
            info.default_factory = lambda value=value: copy.deepcopy(value)
        spec[key] = (annotations.get(key, source.model_fields[src].annotation), info)
    spec.update(extra or {})
    model = create_model(name, __base__=StrictModel, __doc__=doc, __module__=source.__module__, **spec)
    return model
