"""Typed configuration helpers: dataclasses from YAML/dicts with unknown keys rejected.

Each stage defines its own frozen-or-plain ``@dataclass`` config (fields with defaults and attribute
docstrings, cross-field checks in ``__post_init__``). This module turns nested mappings into those
dataclasses, naming the dotted path of any unknown key or wrongly typed value.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "EXTENDS_KEY",
    "apply_overrides",
    "documented_yaml",
    "field_docs",
    "from_dict",
    "load_yaml",
    "set_dotted",
    "to_dict",
]

T = TypeVar("T")


EXTENDS_KEY = "extends"
"""Top-level key of a config YAML naming another config file (relative to this one) that it
builds on: the other file is read first and this one's keys are laid over it."""


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, resolving ``extends: other.yaml`` chains; raise naming the file.

    A file with ``extends: <path>`` (relative to the file) is the other file's mapping with this
    file's keys merged over it: mappings merge key by key, recursively; any other value (a list,
    a scalar, ``null``) replaces the inherited one. The result has no ``extends`` key.

    Raises
    ------
    FileNotFoundError
        ``path``, or a file it extends, does not exist.
    ValueError
        Not valid YAML, not a mapping, an ``extends`` that is not a path, or a cycle of extends.
    """
    return _load_yaml_chain(Path(path), ())


def _load_yaml_chain(p: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not p.is_file():
        extended_by = f" (extended by `{chain[-1]}`)" if chain else ""
        raise FileNotFoundError(f"config file `{p}`{extended_by} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"config file `{p}` is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file `{p}` must contain a mapping at the top level")
    if EXTENDS_KEY not in data:
        return data
    base = data.pop(EXTENDS_KEY)
    if not isinstance(base, str) or not base.strip():
        raise ValueError(
            f"config file `{p}`: `{EXTENDS_KEY}` must be the path of another config file "
            f"(relative to this one), got {base!r}"
        )
    here = p.resolve()
    base_path = (here.parent / base).resolve()
    if base_path in (*chain, here):
        cycle = " → ".join(f"`{q.name}`" for q in (*chain, here, base_path))
        raise ValueError(f"config file `{p}`: `{EXTENDS_KEY}` forms a cycle: {cycle}")
    return _merge(_load_yaml_chain(base_path, (*chain, here)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: mappings merge recursively, everything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override `{item}` must look like `section.key=value`")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``, creating missing sections."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override `{key}`: `{part}` is not a section")
    node[parts[-1]] = value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields.

    Raises
    ------
    ValueError
        On unknown keys or values of the wrong type, naming the dotted path (``where``).
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ValueError(f"`{where or cls.__name__}` must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    moved = getattr(cls, "MOVED_KEYS", {})
    for key in unknown:
        if key in moved:
            raise ValueError(
                f"`{_join(where, key)}` has moved to `{moved[key]}`; move the value there "
                "(the `model:` section holds the model settings of every stage)"
            )
    if unknown:
        path = ", ".join(f"`{_join(where, k)}`" for k in unknown)
        raise ValueError(
            f"unknown config key(s) {path}; allowed keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) → plain JSON/YAML-able dict, enums as their values, paths as str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"`{where}`: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise ValueError(f"`{where}`: {value!r} is not one of {choices}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"`{where}` must be a list, got {value!r}")
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"`{where}` must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"`{where}` must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{where}` must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"`{where}` must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"`{where}` must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"`{where}` must be a path, got {value!r}")
        if isinstance(value, str) and "://" in value:
            return value  # a URI (s3://…) stays a string: Path() would fold its "//"
        return Path(value)
    return value


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal under each field), by field name."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def documented_yaml(obj: Any, *, indent: int = 0) -> str:
    """A dataclass config as YAML with each field's docstring as a comment above it."""
    pad = " " * indent
    docs = field_docs(type(obj))
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for chunk in _wrap(docs.get(f.name, ""), 96 - indent):
            lines.append(f"{pad}# {chunk}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(documented_yaml(value, indent=indent + 2))
        else:
            dumped = yaml.safe_dump({f.name: to_dict(value)}, default_flow_style=True, width=1000)
            lines.append(pad + dumped.strip().removeprefix("{").removesuffix("}"))
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) if text else []
