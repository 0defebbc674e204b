"""The reference pages of the docs site, generated from the code so they cannot drift.

``suite_reference()`` renders every field of ``Suite`` and of every section nested in it (type,
default, constraints, description) from the pydantic models; ``parameters_reference()`` does the
same for the ``Params`` of every registered method, attack, dataset and teacher source, and the
options of every registered model (from its factory's signature). ``undescribed()`` lists the
fields without a description: a test keeps it empty. The mkdocs hook ``docs/hooks/reference.py``
calls these at build time; nothing here is written by hand twice.

Convention for a new field: ``name: type = Field(default, description="...")`` (a pydantic Field
with a one-line description). The anchors here are the ones error messages point to
(``rkbench.suite.docs_link``).
"""
from __future__ import annotations

import inspect
import json
import typing
from enum import Enum
from typing import Any, Iterator, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .attacks import ATTACKS
from .data import DATASETS
from .methods import METHODS
from .models import MODELS
from .suite import Suite, suite_sections
from .teachers import TEACHER_SOURCES

# registry kind -> (its registry, the heading on the parameters page, the anchor prefix)
KINDS = {
    "method": (METHODS, "Methods", "method"),
    "attack": (ATTACKS, "Attacks", "attack"),
    "dataset": (DATASETS, "Datasets", "dataset"),
    "teacher source": (TEACHER_SOURCES, "Teacher sources", "teacher-source"),
    "model": (MODELS, "Models", "model"),
}
FACTORY_ARGUMENTS = {"num_classes", "in_channels", "image_size"}  # every model factory's, set by rkbench


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms: ``int | None``, ``"eval" | "train"``."""
    if annotation is None or annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(type_name(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return f"mapping[{', '.join(type_name(a) for a in args)}]" if args else "mapping"
    if origin is typing.Annotated:
        return type_name(args[0])
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        if issubclass(annotation, Enum):
            return " | ".join(json.dumps(m.value) for m in annotation)
        return {"str": "str", "int": "int", "float": "float", "bool": "bool", "dict": "mapping",
                "list": "list", "Path": "path", "PosixPath": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    text = json.dumps(_plain(value), ensure_ascii=False)
    if len(text) > 60:
        return "see the section" if isinstance(value, BaseModel) else text[:57] + "..."
    return text


def constraints(field: FieldInfo) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=",
               "max_length": "length <=", "pattern": "matches"}
    out = []
    for item in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(item, attribute, None)
            if value is not None:
                out.append(f"{symbol} `{value}`")
    return ", ".join(out)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def field_table(model: type[BaseModel], defaults: dict | None = None) -> str:
    """One row per field: name, type, default, description (with its constraints)."""
    if not model.model_fields:
        return "No parameters.\n"
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        default = json.dumps(_plain(defaults[name])) if defaults and name in defaults else default_text(field)
        description = field.description or ""
        limits = constraints(field)
        if limits:
            description = f"{description} ({limits})" if description else limits
        lines.append(f"| `{name}` | `{_cell(type_name(field.annotation))}` | `{_cell(default)}` | "
                     f"{_cell(description)} |")
    return "\n".join(lines) + "\n"


def suite_reference() -> str:
    """Every section of a suite file, root first, each a heading whose anchor is the section's path."""
    parts = []
    for path, model in suite_sections():
        title = path or "the suite file (top level)"
        anchor = path.replace(".", "-") if path else "top-level"
        doc = inspect.getdoc(model) if model.__doc__ and model.__doc__ is not BaseModel.__doc__ else ""
        parts.append(f"### `{title}` {{#{anchor}}}\n\n" + (f"{doc}\n\n" if doc else "") + field_table(model))
    return "\n".join(parts)


def _params_of(kind: str, obj: Any) -> type[BaseModel] | None:
    return None if kind == "model" else obj.Params


def model_options(factory: Any) -> dict[str, inspect.Parameter]:
    """A model factory's own options: its keyword arguments but the three rkbench sets."""
    return {name: parameter for name, parameter in inspect.signature(factory).parameters.items()
            if name not in FACTORY_ARGUMENTS and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}


def model_options_table(factory: Any, descriptions: dict[str, str]) -> str:
    """Options from the factory's signature; descriptions from its registration
    (``@MODELS.register(name, ..., options={"width": "..."})``)."""
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for name, parameter in model_options(factory).items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            kind = annotation
        else:
            kind = type_name(annotation) if annotation is not inspect.Parameter.empty else ""
        default = "required" if parameter.default is inspect.Parameter.empty else json.dumps(parameter.default)
        lines.append(f"| `{name}` | `{_cell(kind)}` | `{_cell(default)}` | {_cell(descriptions.get(name, ''))} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else "No options.\n"


def entry_anchor(kind: str, name: str) -> str:
    return f"{KINDS[kind][2]}-{name}".replace("_", "-").replace(".", "-").lower()


def parameters_reference() -> str:
    parts = []
    for kind, (registry, heading, _) in KINDS.items():
        parts.append(f"## {heading} {{#{KINDS[kind][2]}s}}\n")
        for entry in registry:
            parts.append(f"### `{entry.name}` {{#{entry_anchor(kind, entry.name)}}}\n")
            about = entry.description + (f" (source: {entry.source})" if entry.source else "")
            if about:
                parts.append(_cell(about) + "\n")
            if kind == "model":
                parts.append(model_options_table(entry.obj, entry.extra.get("options", {})))
            else:
                defaults = getattr(entry.obj, "defaults", None) or None  # attack presets change defaults only
                parts.append(field_table(entry.obj.Params, defaults))
    return "\n".join(parts)


def registry_listing(kind: str) -> str:
    """What ``rkbench list KIND`` prints (run in this process, 120 columns)."""
    from click.testing import CliRunner

    from .cli import main
    from .cli_display import console

    width = console.width
    console.width = 120
    try:
        result = CliRunner().invoke(main, ["list", kind])
    finally:
        console.width = width
    if result.exit_code != 0:
        raise RuntimeError(f"rkbench list {kind} failed: {result.output}")
    return result.output.rstrip() + "\n"


def registries_listing() -> str:
    parts = []
    for kind in ("methods", "attacks", "models", "datasets", "teachers"):
        parts.append(f"### `rkbench list {kind}`\n\n```text\n{registry_listing(kind)}```\n")
    return "\n".join(parts)


def all_models() -> Iterator[tuple[str, type[BaseModel]]]:
    """(where, model) for the suite's sections and every registered thing's Params."""
    for path, model in suite_sections():
        yield (f"suite {path}" if path else "suite", model)
    for kind, (registry, _, _) in KINDS.items():
        if kind == "model":
            continue
        for entry in registry:
            yield f"{kind} {entry.name}", entry.obj.Params


def undescribed(models: list[tuple[str, type[BaseModel]]] | None = None) -> list[str]:
    """Fields without a description, as ``where: field``: by default every field of ``all_models`` and
    every registered model's options (described in its registration's ``options``)."""
    missing = [f"{where}: {name}" for where, model in (all_models() if models is None else models)
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    if models is None:
        missing += [f"model {entry.name}: {name}" for entry in MODELS for name in model_options(entry.obj)
                    if not str(entry.extra.get("options", {}).get(name, "")).strip()]
    return missing


__all__ = ["Suite", "suite_reference", "parameters_reference", "registries_listing", "undescribed",
           "entry_anchor", "KINDS"]
