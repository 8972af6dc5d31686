"""Loading the parameters: params/base.yaml < params/profiles/<profile>.yaml < ``--set``
overrides merged with the file each value came from, then built into the dataclasses with every
type and range checked (a :class:`~copa.config.errors.ParamsError` names the file and the key),
then the checks across values (``copa.config.relations``)."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml

from copa.config.errors import ParamsError, source_of
from copa.config.params import Params
from copa.config.ranges import Range
from copa.config.relations import check_relations

DEFAULT_PARAMS_DIR = Path("params")
BASE_FILE = "base.yaml"
PROFILES_DIR = "profiles"
OVERRIDE_SOURCE = "--set"


# libyaml's parser where PyYAML was built with it: the pure-Python one took 90% of load_params
# (0.13 s a call, and the Snakefile, every `copa` command and many tests make dozens of calls).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges keys by design
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (a ``yaml.YAMLError`` naming the key and its line)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a (C)SafeLoader subclass


def available_profiles(params_dir: Path = DEFAULT_PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in (Path(params_dir) / PROFILES_DIR).glob("*.yaml"))


def load_params(
    profile: str | None = None,
    overrides: Sequence[str] = (),
    params_dir: str | Path = DEFAULT_PARAMS_DIR,
) -> Params:
    """Resolve base < profile < overrides into a validated :class:`Params`.

    ``profile=None`` takes the ``profile`` named in base.yaml.
    ``overrides`` are ``"dotted.key=value"`` strings; values are parsed as YAML.
    """
    merged, provenance = _profile_values(profile, Path(params_dir))
    for override in overrides:
        _merge(merged, parse_override(override), OVERRIDE_SOURCE, provenance)
    return _validated(merged, provenance)


def _profile_values(profile: str | None, params_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """base.yaml merged with the profile's file, and where each leaf came from."""
    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    base_path = params_dir / BASE_FILE
    _merge(merged, _read_yaml(base_path), str(base_path), provenance)
    profile = profile or merged.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ParamsError(f"{base_path}: key 'profile' must name a profile in {params_dir / PROFILES_DIR}")
    profile_path = params_dir / PROFILES_DIR / f"{profile}.yaml"
    if not profile_path.is_file():
        raise ParamsError(
            f"unknown profile {profile!r}: no file {profile_path} "
            f"(available: {', '.join(available_profiles(params_dir)) or 'none'})"
        )
    _merge(merged, _read_yaml(profile_path), str(profile_path), provenance)
    merged["profile"] = profile
    provenance["profile"] = str(profile_path)
    return merged, provenance


def _validated(merged: dict[str, Any], provenance: dict[str, str]) -> Params:
    params = Params(**_build(Params, merged, "", provenance, exclude=("provenance",)), provenance=provenance)
    check_relations(params)
    return params


def params_from_dict(data: Mapping[str, Any], source: str, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> Params:
    """Validated :class:`Params` from a plain dict such as :meth:`Params.to_dict` wrote (the copy in
    a checkpoint); errors name ``source``. Keys the dict lacks, options added to params/ after it was
    written, come from its profile's current files (their provenance says so); a key params/ no
    longer has is an error."""
    profile = data.get("profile")
    if not isinstance(profile, str):
        raise ParamsError(f"{source}: no 'profile' key naming the parameters' profile")
    merged, provenance = _profile_values(profile, Path(params_dir))
    _merge(merged, data, source, provenance)
    return _validated(merged, provenance)


def validated_record(cls: type, data: Any, source: str) -> Any:
    """``data`` read from ``source`` (e.g. a grid file in params/grids/) as the dataclass ``cls``,
    checked as parameters are: an unknown, missing or mistyped key is a :class:`ParamsError` naming
    ``source`` and the key."""
    provenance: dict[str, str] = {}
    _record_all_sources(data, "", source, provenance)
    return cls(**_build(cls, data, "", provenance))


def _record_all_sources(value: Any, dotted: str, source: str, provenance: dict[str, str]) -> None:
    """Like :func:`_record_sources`, through lists too (``rows[2].label``)."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _record_all_sources(sub, f"{dotted}.{key}" if dotted else str(key), source, provenance)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _record_all_sources(sub, f"{dotted}[{i}]", source, provenance)
    provenance[dotted or "top level"] = source


def overrides_of(overrides: Sequence[str], sections: Sequence[str]) -> list[str]:
    """The ``"dotted.key=value"`` overrides whose key is one of ``sections`` (top-level or dotted,
    e.g. ``"finetune.vqa"``) or lies under one."""
    def within(key: str) -> bool:
        return any(key == s or key.startswith(f"{s}.") for s in sections)
    return [o for o in overrides if within(o.partition("=")[0].strip())]


def parse_override(text: str) -> dict[str, Any]:
    """``"synth.seed=3"`` -> ``{"synth": {"seed": 3}}`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"{OVERRIDE_SOURCE} {text!r}: expected KEY=VALUE, e.g. synth.seed=3")
    try:
        value = safe_load_unique(raw)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{OVERRIDE_SOURCE} {text!r}: value is not valid YAML ({exc})") from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(into: dict[str, Any], new: Mapping[str, Any], source: str, provenance: dict[str, str], prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source, provenance, dotted + ".")
            continue
        into[key] = dict(value) if isinstance(value, Mapping) else value
        _record_sources(value, dotted, source, provenance)


def _record_sources(value: Any, dotted: str, source: str, provenance: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _record_sources(sub, f"{dotted}.{key}", source, provenance)
    else:
        provenance[dotted] = source


def _build(cls: type, data: Any, prefix: str, provenance: Mapping[str, str], exclude: Sequence[str] = ()) -> dict[str, Any]:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, Mapping):
        raise ParamsError(f"{source_of(where, provenance)}: key '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)  # with the Annotated ranges
    known = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    for key in data:
        if key not in known:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys here: {', '.join(known)}"
            raise ParamsError(f"{source_of(dotted, provenance)}: unknown key '{dotted}'{hint}")
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    values = {}
    for name in known:
        dotted = f"{prefix}{name}"
        if name not in data:
            if name in optional:  # the dataclass's default
                continue
            raise ParamsError(f"{source_of(dotted, provenance)}: missing key '{dotted}'")
        values[name] = _coerce(hints[name], data[name], dotted, provenance)
    return values


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(kind: type, bounds: Range, value: Any, dotted: str, provenance: Mapping[str, str],
            fail: typing.Callable[[str], ParamsError]) -> int | float:
    """``value`` as an int or float parameter within ``bounds``."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        number: int | float = value
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and _parses_as_float(value):  # YAML 1.1 reads 1e-5 as a string
                raise fail(f"a number (YAML needs a dot: write {float(value):.1e})")
            raise fail("a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
    if not bounds.admits(number):
        raise ParamsError(f"{source_of(dotted, provenance)}: key '{dotted}' = {_shown(value)}: must be {bounds.words(kind)}")
    return number


def _shown(value: Any) -> str:
    """``value`` for a message: an integer of hundreds of digits by its length."""
    text = str(value)
    return f"{text[:4]}...{text[-4:]} ({len(text)} digits)" if isinstance(value, int) and len(text) > 24 else text


def _coerce(hint: Any, value: Any, dotted: str, provenance: Mapping[str, str]) -> Any:
    def fail(expected: str) -> ParamsError:
        return ParamsError(
            f"{source_of(dotted, provenance)}: key '{dotted}' must be {expected}, got {value!r} ({type(value).__name__})"
        )

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        (bounds,) = [a for a in args[1:] if isinstance(a, Range)]
        return _number(args[0], bounds, value, dotted, provenance, fail)
    if hint in (int, float):
        return _number(hint, Range(), value, dotted, provenance, fail)
    if dataclasses.is_dataclass(hint):
        return hint(**_build(hint, value, dotted + ".", provenance))
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, dotted, provenance)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list of {len(args)} values" if Ellipsis not in args else "a list")
        if Ellipsis in args:
            return tuple(_coerce(args[0], v, f"{dotted}[{i}]", provenance) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{dotted}[{i}]", provenance) for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return [_coerce(args[0], v, f"{dotted}[{i}]", provenance) for i, v in enumerate(value)]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return {k: _coerce(args[1], v, f"{dotted}.{k}", provenance) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"copa.config: unsupported parameter type {hint!r} for '{dotted}'")  # programming error
