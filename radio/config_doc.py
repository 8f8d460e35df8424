"""``radio config COMMAND``: every ``--set`` key of a command, its default and a one-line description.

Generated from the config dataclasses, so it cannot drift from what the loader accepts: keys are
the dataclass fields (nested dataclasses become ``section.key``), defaults are the field defaults,
and a description is the field's ``metadata["help"]`` when given, else its source comment (on the
field's line, or the comment lines right above it).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import json
import textwrap
import tokenize
import typing
from functools import lru_cache

#: command -> "module:Class" of its config root (the class ``--config``/``--set`` fill)
COMMANDS = {
    "preprocess": "preprocess.source:PreprocessConfig",
    "compact": "preprocess.compact:CompactConfig",
    "train": "radio.train.config:TrainConfig",
    "train-sync": "radio.train.config:TrainConfig",
    "dub": "pipelines.dub:DubJobConfig",
    "evaluate": "eval.config:EvalConfig",
    "model-summary": "radio.model.config:ModelConfig",
}


def config_class(command: str) -> type:
    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment on a field's line, else the comment
    lines directly above it (joined into one line)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    comments: dict[int, tuple[int, str]] = {}  # line -> (column of the comment's text, text)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#")
            comments[tok.start[0]] = (tok.start[1] + len(tok.string) - len(text.lstrip()), text.strip())

    def own_line(k: int) -> bool:
        return k in comments and lines[k - 1].lstrip().startswith("#")

    names = {f.name for f in dataclasses.fields(cls)}
    body = ast.parse(textwrap.dedent(src)).body[0].body
    field_lines = {node.lineno: node.target.id for node in body
                   if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if field_lines.get(n) not in names:
            continue
        text = []
        if n in comments:  # on the field's line, continued on lines whose text lines up under it
            col, first = comments[n]
            text.append(first)
            k = n + 1
            while own_line(k) and abs(comments[k][0] - col) <= 1:
                text.append(comments[k][1])
                k += 1
        else:  # a block right above the field (not the tail of the previous field's comment)
            indent = len(line) - len(line.lstrip())
            k = n - 1
            while own_line(k) and comments[k][0] <= indent + 2:
                text.insert(0, comments[k][1])
                k -= 1
        out[field_lines[n]] = " ".join(t for t in text if t)
    return out


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def keys(cls: type, prefix: str = "") -> list[tuple[str, object, str]]:
    """``[(dotted key, default, description)]`` of every leaf field of ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += keys(tp, f"{prefix}{f.name}.")
            continue
        desc = f.metadata.get("help") or comments.get(f.name) or f"(see {cls.__module__}.{cls.__name__})"
        out.append((prefix + f.name, _default(f), desc))
    return out


def _show(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if isinstance(value, (dict, list)) or value is None or isinstance(value, bool) \
        else str(value)


def render(command: str) -> str:
    """The ``radio config COMMAND`` text: one line per key, ``key = default  # description``."""
    cls = config_class(command)
    rows = keys(cls)
    width = min(40, max(len(f"{k} = {_show(v)}") for k, v, _ in rows))  # long defaults (digests) overhang
    lines = [f"# radio {command}: --set KEY=VALUE (or the same keys in a --config YAML file); "
             f"{len(rows)} keys, defaults shown"]
    for k, v, d in rows:
        left = f"{k} = {_show(v)}"
        lines.append(f"{left:<{width}}  # {d}" if d else left)
    return "\n".join(lines)
