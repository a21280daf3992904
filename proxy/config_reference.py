"""The config reference: every key of config.yaml, from the pydantic models themselves.

`switchboard config-reference` prints it as Markdown (docs/config-reference.md is its output). Each
field's description is its attribute docstring (`use_attribute_docstrings`); its type, constraints
and default come from the field info. Provider and platform kinds are found through the registries,
so an adapter installed from another package shows up too.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.config import RawConfig
from proxy.contracts import AdapterConfig
from proxy.registry import Registry

PROVIDERS = "switchboard.providers"
PLATFORMS = "switchboard.platforms"
#: Field names whose values are secrets: the reference shows a `${VAR}` example, never a value.
_SECRET = re.compile(r"(secret|token|key|password)s?$")
_SKIP = {"providers", "platforms"}  # RawConfig's raw blocks; documented per kind below


def adapter_models(group: str) -> dict[str, type[AdapterConfig]]:
    """kind -> config model of every adapter registered in an entry-point group."""
    registry = Registry(group)
    return {kind: registry.get(kind).config_model for kind in registry.kinds()}


def sections() -> Iterator[tuple[str, type[BaseModel]]]:
    """(key path, model) of every config table: top level, nested models, then every kind."""
    for name, info in RawConfig.model_fields.items():
        if name not in _SKIP:
            yield from _nested(name, info.annotation)
    for group, prefix in ((PROVIDERS, "providers"), (PLATFORMS, "platforms")):
        for kind, model in adapter_models(group).items():
            yield from _nested(f"{prefix}.<name> (kind: {kind})", model)


def _nested(path: str, annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield path, annotation
        for name, info in annotation.model_fields.items():
            yield from _nested(f"{path}.{name}", info.annotation)
    elif origin is list and args:
        yield from _nested(f"{path}[]", args[0])
    elif origin is dict and len(args) == 2:
        yield from _nested(f"{path}.<name>", args[1])
    elif origin in (Union, types.UnionType):  # `Model | None`: the model's table
        for arg in args:
            if arg is not type(None):
                yield from _nested(path, arg)


def undocumented() -> list[str]:
    """`Model.field` for every field of every config model that has no description."""
    seen: set[type[BaseModel]] = set()
    missing = []
    for _, model in sections():
        if model in seen:
            continue
        seen.add(model)
        missing += [f"{model.__name__}.{n}" for n, f in model.model_fields.items() if not f.description]
    return missing


# ------------------------------------------------------------------------------------ rendering


def type_name(annotation: Any) -> str:
    """A readable type: `list[str]`, `"chat" | "agent"`, `str | null`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table (below)"
    return getattr(annotation, "__name__", str(annotation))


def constrained(info: FieldInfo) -> str:
    """The type with its bounds: `float > 0`, `1 ≤ int ≤ 10`, `str (length ≥ 1)`."""
    args = get_args(info.annotation)
    optional = get_origin(info.annotation) in (Union, types.UnionType) and type(None) in args
    core = [a for a in args if a is not type(None)] if optional else [info.annotation]
    name, low, high, extra = " | ".join(type_name(a) for a in core), "", "", []
    for m in info.metadata:
        if isinstance(m, at.Gt):
            low = f"{m.gt} <"
        elif isinstance(m, at.Ge):
            low = f"{m.ge} ≤"
        elif isinstance(m, at.Lt):
            high = f"< {m.lt}"
        elif isinstance(m, at.Le):
            high = f"≤ {m.le}"
        elif isinstance(m, at.MinLen):
            extra.append(f"length ≥ {m.min_length}")
        elif getattr(m, "pattern", None):
            extra.append(f"pattern `{m.pattern}`")
    if low and not high:  # `float > 0` reads better than `0 < float`
        number, op = low.split(" ")
        low, high = "", f"{'>' if op == '<' else '≥'} {number}"
    text = " ".join(x for x in (low, name, high) if x) + (" | null" if optional else "")
    return f"{text} ({', '.join(extra)})" if extra else text


def default(path: str, name: str, info: FieldInfo) -> str:
    secret = bool(_SECRET.search(name))
    if info.is_required():
        if secret:
            return f"required, e.g. `${{{_var(path, name)}}}`"
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if secret and value:
        return f"e.g. `${{{_var(path, name)}}}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _var(path: str, name: str) -> str:
    kind = re.search(r"kind: (\w+)", path)
    prefix = kind.group(1) if kind else path.split(".")[0].rstrip("[]")
    return re.sub(r"\W", "_", f"{prefix}_{name}").upper()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown() -> str:
    out = [
        "# Config reference",
        "",
        "Every key of `config.yaml`, generated from the config models by",
        "`switchboard config-reference > docs/config-reference.md` (a test fails when this page is stale).",
        "Any string value may use `${VAR}` or `${VAR:-default}`; secrets belong there, not in the file.",
    ]
    paths: dict[type[BaseModel], list[str]] = {}
    for path, model in sections():  # a model used in several places (limits rules) gets one table
        paths.setdefault(model, []).append(path)
    for model, where in paths.items():
        path = where[0]
        out += ["", "## " + ", ".join(f"`{p}`" for p in where), ""]
        doc = model.__doc__
        if doc and doc not in (BaseModel.__doc__, AdapterConfig.__doc__):
            out += [_cell(doc), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            row = [f"`{name}`", constrained(info), default(path, name, info), info.description or ""]
            row = [_cell(c) for c in row]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"
