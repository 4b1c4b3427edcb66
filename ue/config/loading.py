"""Load YAML configs into typed models: ``key.sub=value`` overrides, deep merge, all errors at once.

Config is data: a YAML file (or a dict) plus overrides, validated by a :class:`ConfigModel`. Every
problem is collected into one :class:`ConfigError` so a user fixes them all in one pass, each line
naming the source, the dotted key, the bad value and what is allowed (torchtune's ``_validate.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic
import yaml
from pydantic_core import ErrorDetails

from ue.registry import did_you_mean

M = TypeVar("M", bound=pydantic.BaseModel)

OVERRIDES_SOURCE = "overrides"
"""The ``source`` of issues caused by a command-line override rather than the file."""

_DATA_SOURCE = "<data>"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_SHOWN = 80


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()
"""The ``value`` of an issue that has none (a missing key, an unreadable file)."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config.

    ``source`` is the file (``path:line`` where known), ``"overrides"`` or ``"<data>"``; ``key`` the
    dotted key ("" for file-level problems); ``value`` what was given; ``hint`` the allowed values or
    the fix.
    """

    source: str
    key: str
    message: str
    value: Any = NO_VALUE
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}: " if self.key else f"{self.source}: "
        details = [] if self.value is NO_VALUE else [f"got {_show(self.value)}"]
        details += [self.hint] if self.hint else []
        return where + self.message + (f" ({'; '.join(details)})" if details else "")


class ConfigError(ValueError):
    """Every problem found in a config; ``errors`` holds them as :class:`ConfigIssue`."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors = list(errors)
        plural = "" if len(self.errors) == 1 else "s"
        lines = "".join(f"\n  - {issue}" for issue in self.errors)
        super().__init__(f"{len(self.errors)} problem{plural} in config:{lines}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and rejects duplicate keys.

    YAML 1.1 only reads ``1.0e-4`` as a float, so ``lr: 1e-4`` would arrive as a string in free-form
    places such as head params; a duplicated key would silently keep the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) legitimately repeat keys; only explicit ones count.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _yaml_issue(source: str, exc: yaml.YAMLError) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    message = f"malformed YAML: {getattr(exc, 'problem', None) or exc}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        # The problem is often detected a line after the real mistake; say where the construct opened.
        message += f" ({context} at line {context_mark.line + 1})"
    return ConfigIssue(where, "", message)


def _require_mapping(obj: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        message = f"the top level must be a mapping of keys to values, not a {type(obj).__name__}"
        raise ConfigError([ConfigIssue(source, "", message, obj)])
    return obj


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), "", f"cannot read config file: {exc.strerror}")]) from None
    try:
        loaded = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(str(path), exc)]) from None
    return _require_mapping({} if loaded is None else loaded, str(path))


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def _parse_item(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        hint = "expected key.sub=value, e.g. model.dtype=bfloat16"
        raise ConfigError([ConfigIssue(OVERRIDES_SOURCE, "", "malformed override", item, hint)])
    if not raw.strip():
        return path, ""
    try:
        return path, yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        issue = ConfigIssue(OVERRIDES_SOURCE, ".".join(path), "value is not valid YAML", raw, "quote it")
        raise ConfigError([issue]) from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=[1,2]", "d.e=null"]`` into ``{"a": {"b": 3}, "c": [1, 2], "d": {"e": None}}``.

    Values are YAML (numbers incl. ``1e-4``, booleans, lists, ``null``); ``x=`` is the empty string.
    Items apply in order, so a later one wins.

    Raises:
        ConfigError: naming every malformed item (no ``=``, an empty key part, a value that is not YAML).
    """
    if isinstance(items, str):
        raise TypeError("parse_overrides takes a list of 'key=value' strings, not one string")
    tree: dict[str, Any] = {}
    issues: list[ConfigIssue] = []
    for item in items:
        try:
            path, value = _parse_item(item)
        except ConfigError as exc:
            issues += exc.errors
            continue
        tree = merge(tree, _nest(path, value))
    if issues:
        raise ConfigError(issues)
    return tree


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``: mappings merge recursively, anything else replaces.

    Neither input is modified; the result may share unmerged sub-objects with them.
    """
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _override_tree(overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(overrides, Mapping):
        return parse_overrides(overrides)
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        tree = merge(tree, _nest(str(key).split("."), value))
    return tree


def load_config(
    model_cls: type[M],
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    data: Mapping[str, Any] | None = None,
) -> M:
    """Build ``model_cls`` from a YAML file and/or a dict, with overrides applied last.

    Args:
        model_cls: the config model to validate against.
        path: a YAML file whose top level is a mapping.
        overrides: ``["key.sub=value", ...]`` (see :func:`parse_overrides`) or ``{"key.sub": value}``.
        data: a dict merged over the file (or used alone when there is no file).

    Raises:
        ConfigError: listing every problem at once, e.g.
            ``cfg.yaml: model.dtype: not an allowed value (got 'flaot16'; allowed: float32, ...)``.
    """
    source = str(path) if path is not None else _DATA_SOURCE
    raw: Mapping[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    if data is not None:
        raw = merge(raw, _require_mapping(data, _DATA_SOURCE))
    tree = _override_tree(overrides)
    try:
        return model_cls.model_validate(merge(raw, tree))
    except pydantic.ValidationError as exc:
        issues = [_issue(err, model_cls, source, _leaf_paths(tree)) for err in exc.errors(include_url=False)]
        raise ConfigError(issues) from None


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        paths += _leaf_paths(value, path) if isinstance(value, Mapping) and value else [path]
    return paths


def _from_override(loc: tuple[str, ...], override_paths: list[tuple[str, ...]]) -> bool:
    # Either the override set something inside the bad key, or the bad key lies inside what it set.
    return bool(loc) and any(p[: len(loc)] == loc or loc[: len(p)] == p for p in override_paths)


def _issue(
    err: ErrorDetails, model_cls: type[pydantic.BaseModel], source: str, override_paths: list[tuple[str, ...]]
) -> ConfigIssue:
    """Turn one pydantic error dict into a :class:`ConfigIssue` with the allowed values as its hint."""
    raw_loc, kind, value = err["loc"], err["type"], err.get("input", NO_VALUE)
    bad_dict_key = raw_loc[-1:] == ("[key]",)  # pydantic's marker for an invalid key of a typed dict
    if bad_dict_key:
        raw_loc = raw_loc[:-1]
    loc = tuple(str(part) for part in raw_loc)
    source = OVERRIDES_SOURCE if _from_override(loc, override_paths) else source
    key = ".".join(loc)
    if kind == "missing":
        return ConfigIssue(source, key, "required key is missing")
    if kind == "extra_forbidden":
        known = _field_names(_annotation_at(model_cls, raw_loc[:-1]))
        return ConfigIssue(source, key, "unknown key", value, _choices_hint(loc[-1], known))
    if bad_dict_key and kind == "literal_error":
        allowed = _allowed_values(_dict_key_type(_annotation_at(model_cls, raw_loc[:-1])))
        return ConfigIssue(source, key, "unknown key", value, _choices_hint(value, allowed))
    if kind in ("literal_error", "enum"):
        allowed = _allowed_values(_annotation_at(model_cls, err["loc"]))
        hint = _choices_hint(value, allowed) if allowed else f"allowed: {err['ctx']['expected']}"
        return ConfigIssue(source, key, "not an allowed value", value, hint)
    if kind in ("value_error", "assertion_error"):
        return ConfigIssue(source, key, str(err["ctx"]["error"]), value)
    return ConfigIssue(source, key, err["msg"], value)


def _choices_hint(given: Any, choices: list[str]) -> str:
    hint = f"allowed: {', '.join(choices)}"
    close = did_you_mean(str(given), choices)
    return hint + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _annotation_at(model_cls: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type annotation found by following ``loc`` from ``model_cls``, or None where it is lost."""
    annotation: Any = model_cls
    for part in loc:
        annotation = _unwrap_optional(annotation)
        origin, args = get_origin(annotation), get_args(annotation)
        if _is_model(annotation):
            field = _fields_by_name(annotation).get(str(part))
            annotation = field.annotation if field is not None else None
        elif origin is list and args:
            annotation = args[0]
        elif origin is dict and len(args) == 2:
            annotation = args[1]
        else:
            return None
    return _unwrap_optional(annotation)


def _dict_key_type(annotation: Any) -> Any:
    args = get_args(annotation) if get_origin(annotation) is dict else ()
    return args[0] if args else None


def _fields_by_name(model_cls: type[pydantic.BaseModel]) -> dict[str, Any]:
    fields = dict(model_cls.model_fields)
    fields.update({f.alias: f for f in model_cls.model_fields.values() if f.alias})
    return fields


def _field_names(annotation: Any) -> list[str]:
    return list(_fields_by_name(annotation)) if _is_model(annotation) else []


def _allowed_values(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return []


def dump_config(cfg: pydantic.BaseModel) -> str:
    """The resolved config as YAML (every default filled in), for saving beside a stage's outputs."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_hash(cfg: pydantic.BaseModel) -> str:
    """First 16 hex chars of the sha256 of the canonical (key-sorted) JSON, for the run manifest."""
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def stage_hash(cfg: pydantic.BaseModel) -> str:
    """:func:`config_hash` of a stage config without its ``run`` section: where a run is stored and
    ``force`` say nothing about what the stage computes, so they must not make a rerun redo it."""
    return config_hash(type(cfg).model_construct(**{**dict(cfg), "run": None}))
