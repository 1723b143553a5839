"""docs/configuration.md, generated from the settings models of config.py, so that the
reference cannot drift from what is validated: each key's TOML path, type, default,
environment variable and description are read from the models and their ``Field``\\ s.

It never loads a config file and never reads the environment; its output depends on the
code alone (tests/test_docs.py compares it with the file in the checkout)::

    python -m difysync.configdoc            # print it
    python -m difysync.configdoc --write    # (re)write docs/configuration.md of this checkout
"""

from __future__ import annotations

import json
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from . import config
from .config import Settings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
WRITE_COMMAND = "python -m difysync.configdoc --write"
WIDTH = 95

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}
_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))


@dataclass(frozen=True)
class Key:
    """One settable key, as the reference shows it."""

    path: str               # "dify.base_url", "folders[].path"
    type: str               # "integer, >= 1, <= 32"
    default: str            # a TOML literal in backticks, "required", or words from the model
    env: str | None         # "DIFYSYNC_DIFY__BASE_URL"; None inside an array of tables
    description: str
    env_whole: str | None = None  # inside an array of tables: the variable that sets it all


@dataclass(frozen=True)
class Section:
    """A TOML table (``[dify]``), the array of tables ``[[folders]]``, or the top level."""

    title: str
    description: str
    keys: list[Key] = field(default_factory=list)


# --- walking the models ------------------------------------------------------------------


def sections(model: type[BaseModel] = Settings) -> list[Section]:
    """The top-level keys first, then one section per table or array of tables (nested ones
    too), in the order the models declare them."""
    top = Section("Top level", "Keys outside any table.")
    found = [top]
    delimiter = str(model.model_config.get("env_nested_delimiter") or "")
    _walk(model, top, found, _Place("", str(model.model_config.get("env_prefix", "")).upper(), None),
          delimiter)
    return [s for s in found if s.keys]


@dataclass(frozen=True)
class _Place:
    """Where the walk is: the key path so far, the variable prefix (None where there is
    none: inside an array of tables), and the variable that sets the enclosing array."""

    path: str
    env: str | None
    whole: str | None


def _walk(model: type[BaseModel], section: Section, found: list[Section], at: _Place, delimiter: str) -> None:
    for name, info in model.model_fields.items():
        path = at.path + name
        env = at.env + name.upper() if at.env is not None else None
        inner, is_array = _table_of(info.annotation)
        if inner is None:
            section.keys.append(Key(path, _type(info), _default(info), env, _describe(info), at.whole))
            continue
        table = path.replace("[]", "")
        child = Section(f"[[{table}]]" if is_array else f"[{table}]", _describe(info) or _doc_of(inner))
        found.append(child)
        if is_array:
            section.keys.append(Key(path, f"array of tables (`{child.title}`)", _default(info), env,
                                    _array_description(info, env), at.whole))
            _walk(inner, child, found, _Place(path + "[].", None, env or at.whole), delimiter)
        else:
            nested = env + delimiter if env is not None and delimiter else None
            _walk(inner, child, found, _Place(path + ".", nested, at.whole), delimiter)


def _table_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds as a table (``[dify]``) or an array of tables, if any."""
    if get_origin(annotation) in (Union, types.UnionType):  # an optional table is still a table
        present = [a for a in get_args(annotation) if a is not type(None)]
        annotation = present[0] if len(present) == 1 else annotation
    if _is_model(annotation):
        return annotation, False
    if get_origin(annotation) is list and get_args(annotation) and _is_model(get_args(annotation)[0]):
        return get_args(annotation)[0], True
    return None, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _describe(info: FieldInfo) -> str:
    return " ".join((info.description or "").split())


def _doc_of(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _array_description(info: FieldInfo, env: str | None) -> str:
    if env is None:
        return _describe(info)
    return (f"{_describe(info)} In the environment, {env} replaces the whole list, given as a "
            "JSON list of objects; the keys inside have no variables of their own.")


# --- types and defaults --------------------------------------------------------------------


def _type(info: FieldInfo) -> str:
    bounds = [f"{sign} {getattr(m, attr)!r}" for m in info.metadata
              for cls, attr, sign in _BOUNDS if isinstance(m, cls)]
    return ", ".join([_type_name(info.annotation), *bounds])


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_toml(a)}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}s" if args else "list"
    if origin is dict or annotation is dict:
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    shown = extra.get("default_shown")  # a default computed on the host (the owner's host name)
    if shown:
        return str(shown)
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return "not set" if value is None else f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | PurePath):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return str(value)


# --- the page ------------------------------------------------------------------------------


def render(model: type[BaseModel] = Settings) -> str:
    """The whole of docs/configuration.md."""
    out = [_preamble()]
    for section in sections(model):
        out.append(f"## {section.title}\n")
        if section.description:
            out.append(f"{_wrap(section.description)}\n")
        for key in section.keys:
            out.append(_render_key(key))
    return "\n".join(out).rstrip("\n") + "\n"


def _render_key(key: Key) -> str:
    env = f"`{key.env}`" if key.env else (f"none of its own (`{key.env_whole}` sets the whole list)"
                                          if key.env_whole else "none")
    facts = f"- type: {key.type}\n- default: {key.default}\n- environment: {env}"
    text = _wrap(key.description) if key.description else "(no description)"
    return f"### `{key.path}`\n\n{facts}\n\n{text}\n"


def _preamble() -> str:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter") or "")
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/difysync/config.py; do not edit. Run `{WRITE_COMMAND}`. -->",
        "",
        _wrap(f"difysync reads one TOML file: the one given with `-c FILE`, else "
              f"`${config.CONFIG_ENV_VAR}`, else `./{config.LOCAL_CONFIG_NAME}`, else "
              f"`{config.SYSTEM_CONFIG_PATH}`. Unknown keys are errors (exit 78, naming the key), "
              "and relative paths resolve against the folder the file is in. "
              "[`sync.example.toml`](../sync.example.toml) shows every key in a file."),
        "",
        _wrap(f"**Environment.** Every key outside `[[folders]]` can be set by a variable, which wins "
              f"over the file: `{prefix}` plus the key in capitals, tables nested with "
              f"`{delimiter}` (`{prefix}DIFY{delimiter}CONCURRENCY=8`). Names are not case-sensitive. "
              'Lists and tables given this way must be JSON (`["md", "txt"]`).'),
        "",
        _wrap(f"**The API key** is not a setting: it is never read from the file (a key named "
              f"`api_key` anywhere in it is an error). It comes from the file named by "
              f"`dify.api_key_file`, else from `${config.API_KEY_ENV_VAR}`."),
        "",
    ]
    return "\n".join(lines)


def _wrap(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


@click.command()
@click.option("--write", is_flag=True, help=f"Write {DOC_PATH.relative_to(DOC_PATH.parents[1])} "
                                            "instead of printing it.")
def main(write: bool) -> None:
    """Print (or write) the configuration reference generated from the settings models."""
    page = render()
    if write:
        if not DOC_PATH.parent.is_dir():  # an installed copy: there is no checkout to write into
            raise click.UsageError(f"--write needs a source checkout ({DOC_PATH.parent} does not exist); "
                                   "without it the reference is printed")
        DOC_PATH.write_text(page, encoding="utf-8")
        click.echo(f"wrote {DOC_PATH}", err=True)
    else:
        sys.stdout.write(page)


if __name__ == "__main__":
    main()
