"""The one config system: typed dataclasses, filled from YAML files and ``key.sub=value`` overrides.

Every job (preprocess, train, dub, evaluate) describes its settings as a dataclass tree; this
module turns a YAML mapping into that tree with unknown keys rejected (a typo is an error, not a
silently ignored setting), and back into a plain dict for checkpoints and run summaries.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Sequence, TypeVar

import fsspec
import yaml

from preprocess.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    pass


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}. Got {value!r}.")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}.")
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list. Got {value!r}.")
        out = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is Any or tp is dict:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false. Got {value!r}.")
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer. Got {value!r}.")
        try:
            return tp(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected {tp.__name__}. Got {value!r}.") from e
    return value


def check_min(obj: Any, **minimums: float) -> None:
    """For a dataclass's ``__post_init__``: ValueError naming the first field below its minimum
    (``from_dict`` makes it a one-line ConfigError with the section's name)."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value < low:
            raise ValueError(f"{name}: expected at least {low}. Got {value!r}.")


def check_choice(obj: Any, **choices: Sequence[str]) -> None:
    """For a dataclass's ``__post_init__``: ValueError naming the first field not among its choices."""
    for name, allowed in choices.items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(map(str, allowed))}. Got {value!r}.")


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; known: {sorted(fields)}.")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a dataclass's own checks (__post_init__): still a config mistake
        raise ConfigError(f"{where}: {e}") from e


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{'a.b.c': value}`` (an empty section is a value: ``{}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_dict(obj: Any) -> dict:
    """Plain nested dict (safe for YAML, JSON and ``torch.save`` with ``weights_only`` loading)."""
    return dataclasses.asdict(obj)


def plain(x: Any) -> Any:
    """Tuples -> lists, recursively: the form YAML writes and reads back, so saved and current
    configs compare equal."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def set_path(data: dict, dotted: str, value: Any) -> None:
    """``data['a']['b'] = value`` for ``dotted`` 'a.b' (ConfigError when 'a' holds a value, not a section)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section.")
    cur[keys[-1]] = value


def _yaml_problem(e: "yaml.YAMLError") -> str:
    """PyYAML's several-line message as one line: what is wrong, and where."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or type(e).__name__}{where}"


def bundled_configs() -> dict[str, str]:
    """The configs shipped with radio, by name (``smoke-cpu`` -> its file): ``radio/configs/*.yaml``
    of an installed wheel (setup.py puts them there), ``configs/*.yaml`` of a checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent        # holds preprocess/ and radio/
    folder = root / "radio" / "configs"
    if not folder.is_dir():
        folder = root / "configs"
    return {f.stem: str(f) for f in sorted(folder.glob("*.yaml"))}


def resolve_config(value: str) -> str:
    """What ``--config value`` names: a file that exists (a path always wins) or any remote URI, as
    given; else the bundled config of that name (``smoke-cpu``, ``smoke-cpu.yaml`` or the repository's
    ``configs/smoke-cpu.yaml`` run from another folder); else ConfigError, in one line, listing them."""
    import os

    from fsspec.utils import get_protocol

    local = os.path.expanduser(value)
    if get_protocol(value) != "file" or os.path.exists(local) and not os.path.isdir(local):
        return value
    parts = os.path.normpath(value).split(os.sep)
    name = parts[-1].removesuffix(".yaml").removesuffix(".yml")
    bundled = bundled_configs()
    if name in bundled and (len(parts) == 1 or parts[:-1] == ["configs"]):
        return bundled[name]     # (a folder is no config: `--config eval` in the checkout named its eval/ package)
    if os.path.isdir(local):
        return value             # read_yaml says: not a config file (IsADirectoryError)
    raise ConfigError(f"--config {value!r}: no such config file, nor a bundled config "
                      f"(bundled: {', '.join(bundled) or 'none'}).")


def read_yaml(path: str) -> dict:
    """The top-level mapping of the YAML file ``path`` (any fsspec URI, or a bundled config's name:
    ``resolve_config``); ConfigError, in one line, when it is not a UTF-8 YAML mapping."""
    path = resolve_config(path)
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise ConfigError(f"{path}: not a config file ({type(e).__name__}).") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8 at byte {e.start}).") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level.")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``'a.b=value'`` -> ``('a.b', value)``, the value YAML-parsed; ConfigError in one line."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value.")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(e)} "
                          "(quote it: key='value').") from e


def load(cls: type[T], path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``cls`` from a YAML file (any fsspec URI) plus ``a.b=value`` overrides (YAML-parsed)."""
    data: dict = read_yaml(path) if path else {}
    for item in overrides:
        set_path(data, *parse_override(item))
    return from_dict(cls, data, where=path or "config")
