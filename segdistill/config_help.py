"""``segdistill config CONFIG [overrides]``: the resolved config, one key a line, with its meaning and allowed values.

The config is loaded exactly as ``segdistill train`` loads it (:func:`segdistill.config.load_config`: defaults, the
``distill.method`` preset, the YAML file, the ``section.key=value`` overrides, then the rules). What is printed comes
from the config dataclasses themselves, so it cannot drift from what is checked:

* a key's meaning is the ``help`` text of its field (``checked(default, rule, help)`` / ``described(default, help)``
  in :mod:`segdistill.config` and the KD term configs in :mod:`segdistill.distill.terms`);
* its allowed values are the field's rule (``>= 1``, ``one of sgd, adamw``, ...), or its type when any value of the
  type is allowed;
* a section's meaning is the help text of the field that holds it, else its class docstring, else (a KD term's
  config) the first paragraph of its module's docstring.

Open sections are printed like fixed ones: every registered KD term's ``distill.<term>``, and each entry of an open
mapping (``model.arch.<key>``, ``search.budget.<platform>``) after the mapping's own line.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field

import yaml

from .config import _items, dump_config, load_config, to_dict
from .configs import resolve_config_path
from .errors import ConfigError


@dataclass
class Entry:
    """One key of the resolved config."""

    key: str  # dotted, as an override names it: train.iters
    value: typing.Any
    default: typing.Any  # NO_DEFAULT for an entry of an open mapping that the defaults lack
    meaning: str
    allowed: str


NO_DEFAULT = object()


@dataclass
class Section:
    """A section (``train``) or sub-section (``distill.pixel``) with its own keys, in their saved order."""

    name: str
    meaning: str
    entries: list[Entry] = field(default_factory=list)


# ---------------------------------------------------------------------------- what a field means and allows
def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line, RST literals and roles (````x````, ``:mod:`x```) as plain x."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
    return re.sub(r":\w+:`([^`]*)`", r"\1", text)


def _class_meaning(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the signature dataclasses writes for a bare class
        return _first_paragraph(doc)
    return _first_paragraph(getattr(sys.modules.get(cls.__module__), "__doc__", ""))


def _type_text(tp) -> str:
    """A field type in words: ``int | None`` -> "integer or null", ``list[str]`` -> "list of text"."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return " or ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    if origin is list:
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[1])}" if len(args) == 2 and args[1] is not typing.Any else "mapping"
    return {int: "integer", float: "number", str: "text", bool: "true/false", typing.Any: "any value"}.get(tp, str(tp))


def _allowed(f: dataclasses.Field | None, tp) -> str:
    """The field's rule in words (each element of a list, each value of a mapping, null where the type allows it),
    else its type."""
    rule = f.metadata.get("rule") if f is not None else None
    if rule is None:
        return _type_text(tp) if tp is not None else "any value"
    container = next((typing.get_origin(t) for t in (tp, *typing.get_args(tp)) if typing.get_origin(t) in (list, dict)), None)
    text = {list: f"each element {rule.text}", dict: f"each value {rule.text}"}.get(container, rule.text)
    return text + (" or null" if type(None) in typing.get_args(tp) else "")


def show(value) -> str:
    """A value as one line of YAML, as an override would write it: ``[180, 240]``, ``null``, ``true``."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=float("inf"), sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


# ---------------------------------------------------------------------------- the walk
def describe(cfg) -> list[Section]:
    """Every section of ``cfg`` (a resolved :class:`~segdistill.config.Config`), sub-sections after their parent."""
    sections: list[Section] = []
    defaults = type(cfg)()
    for f in dataclasses.fields(cfg):
        _walk(getattr(cfg, f.name), getattr(defaults, f.name), f.name, _class_meaning(type(getattr(cfg, f.name))),
              sections)
    return sections


def _walk(obj, default, name: str, meaning: str, out: list[Section]) -> None:
    section = Section(name, meaning)
    out.append(section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    later = []
    for key, value in _items(obj):
        f = fields.get(key)  # None: an open section (distill.<term>)
        help_text = f.metadata.get("help", "") if f is not None else ""
        default_value = getattr(default, key, None)
        if dataclasses.is_dataclass(value):
            later.append((value, default_value, f"{name}.{key}", help_text or _class_meaning(type(value))))
            continue
        tp = hints.get(key)
        section.entries.append(Entry(f"{name}.{key}", value, default_value, help_text, _allowed(f, tp)))
        if isinstance(value, dict):  # an open mapping: one line per entry too
            value_rule = _allowed(f, typing.get_args(tp)[1] if len(typing.get_args(tp)) == 2 else None)
            for k, v in value.items():
                section.entries.append(Entry(f"{name}.{key}.{k}", v, (default_value or {}).get(k, NO_DEFAULT),
                                             f"an entry of {name}.{key}", value_rule))
    for args in later:
        _walk(*args, out)


# ---------------------------------------------------------------------------- printing
def select(sections: list[Section], name: str | None) -> list[Section]:
    """The section called ``name`` with its sub-sections (all of them for ``None``)."""
    if name is None:
        return sections
    picked = [s for s in sections if s.name == name or s.name.startswith(name + ".")]
    if not picked:
        raise ConfigError(f"--section {name}: no such section; choose one of {', '.join(s.name for s in sections)}")
    return picked


def format_entry(e: Entry, width: int = 44) -> str:
    """``key = value  # meaning [allowed] (default D)``, the default only where the value differs from it."""
    line = f"{f'{e.key} = {show(e.value)}':<{width}}  # {e.meaning or '(no description)'} [{e.allowed}]"
    if e.default is not NO_DEFAULT and to_dict(e.value) != to_dict(e.default):
        line += f" (default {show(e.default)})"
    return line


def format_sections(sections: list[Section]) -> str:
    """One key a line (:func:`format_entry`), under a ``[section] meaning`` header per section."""
    lines = []
    for s in sections:
        lines += ["", f"[{s.name}] {s.meaning}".rstrip(), *map(format_entry, s.entries)]
    return "\n".join(lines) + "\n"


def section_yaml(cfg, sections: list[Section], name: str | None) -> str:
    """The resolved config as YAML: all of it (exactly what ``config.yaml`` beside a run holds), or one section
    nested under its dotted name."""
    if name is None:
        return dump_config(cfg)
    select(sections, name)  # the same error for an unknown name
    node = cfg
    for part in name.split("."):
        node = getattr(node, part)
    data = to_dict(node)
    for part in reversed(name.split(".")):
        data = {part: data}
    return yaml.safe_dump(data, sort_keys=False)


def config_text(config: str, overrides: list[str] | None = None, section: str | None = None, as_yaml: bool = False) -> str:
    """What ``segdistill config`` prints (a :class:`ConfigError` for an unknown key, a bad value or section)."""
    cfg = load_config(config, overrides)
    sections = describe(cfg)
    if as_yaml:
        return section_yaml(cfg, sections, section)
    head = [f"# segdistill config {' '.join([str(config), *(overrides or [])])}",
            f"# file: {resolve_config_path(config)}",
            "# each line: key = value  # meaning [allowed values] (default, where the value differs from it)",
            "# set any key as section.key=value after the config, e.g. train.iters=100; --yaml: the plain YAML"]
    return "\n".join(head) + "\n" + format_sections(select(sections, section))
