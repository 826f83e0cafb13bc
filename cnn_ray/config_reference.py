"""The configuration reference, ``docs/config.md``, generated from the pydantic models.

:func:`render_reference` walks :class:`~cnn_ray.config.TrainConfig` (every nested section,
including the models inside ``Optional`` / ``Union`` / ``list`` fields) and the sweep file
(:class:`~cnn_ray.tune.jobs.SweepFile`: ``sweep``, ``scheduler``, ``searcher``) and renders one
table row per leaf key: dotted key, type, default, range, description. The field descriptions
are the single source: a field without one is a :class:`MissingDescriptionError` naming it.
The ``## Search space`` section is rendered from the tables the space parser itself uses
(:data:`cnn_ray.tune.space.DISTRIBUTIONS`, :data:`cnn_ray.tune.space_parse.FIXED_KEYS`) and
from the model registry (the families and the knobs each accepts).

Nothing in the page depends on the machine. No argv here: ``cnn-ray config-reference``
(:mod:`cnn_ray.cli`) calls :func:`reference_main`.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from cnn_ray.config_reference_text import github_anchor, md_escape

COMMAND = "cnn-ray config-reference"
DEFAULT_OUT = "docs/config.md"


class MissingDescriptionError(ValueError):
    """A model field has no ``description=``; the message names every such field."""


# ------------------------------------------------------------------------------- text helpers
_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?([^`]+)`")


def _sentence(text: str) -> str:
    """First letter upper case, a final full stop."""
    text = text.strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _docstring(cls: type) -> str:
    """A class's own docstring as Markdown paragraphs (reST roles and ````x```` to ```x```)."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return ""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    text = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text).replace("``", "`")
    return "\n\n".join(md_escape(p) for p in text.split("\n\n"))


def _same_start(doc: str, lead: str) -> bool:
    """Whether a docstring already opens with the field description (one of them suffices)."""
    def words(t: str) -> list[str]:
        return re.findall(r"\w+", t.lower())

    return bool(doc) and words(doc)[: len(words(lead))] == words(lead)


def _num(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)


# ------------------------------------------------------------------------------- type helpers
def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (Union, types.UnionType)


def type_text(ann: Any) -> str:
    """A readable type: ``float``, ``"a" | "b"``, ``int | None``, ``list[int]``, ``[float,
    float]`` (a list of exactly these items), ``mapping`` (a section)."""
    if ann is type(None):
        return "None"
    if ann is Any:
        return "any"
    if _is_model(ann):
        return "mapping"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if _is_union(ann):
        members = [a for a in args if a is not type(None)]
        text = " | ".join(dict.fromkeys(type_text(a) for a in members))
        return text + " | None" if len(members) < len(args) else text
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{type_text(args[0])}]"
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin in (list, set, frozenset):
        return f"list[{type_text(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{type_text(args[0])}, {type_text(args[1])}]" if args else "mapping"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def nested_models(ann: Any, in_list: bool = False) -> list[tuple[type[BaseModel], bool]]:
    """The models inside an annotation, each with whether it sits in a list (``key[]``)."""
    if _is_model(ann):
        return [(ann, in_list)]
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    inner = in_list or origin in (list, tuple, set, frozenset)
    out: list[tuple[type[BaseModel], bool]] = []
    for a in args:
        if a is not Ellipsis and a is not type(None):
            out += [m for m in nested_models(a, inner) if m not in out]
    return out


def range_text(field: Any) -> str:
    """The constraints of a field's metadata: ``[1, 64]``, ``(0.0, 1.0]``, ``>= 0``, ``length
    >= 1``."""
    low = high = None
    extra = []
    for m in field.metadata:
        for attr, side, op in (("ge", "low", "["), ("gt", "low", "("), ("le", "high", "]"),
                               ("lt", "high", ")")):
            v = getattr(m, attr, None)
            if v is not None:
                if side == "low":
                    low = (op, v)
                else:
                    high = (op, v)
        if getattr(m, "min_length", None) is not None:
            extra.append(f"length >= {m.min_length}")
        if getattr(m, "max_length", None) is not None:
            extra.append(f"length <= {m.max_length}")
        if getattr(m, "multiple_of", None) is not None:
            extra.append(f"multiple of {_num(m.multiple_of)}")
        if getattr(m, "pattern", None) is not None:
            extra.append(f"matches {m.pattern}")
    if low and high:
        bound = f"{low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    elif low:
        bound = f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
    elif high:
        bound = f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
    else:
        bound = ""
    return ", ".join([bound] * bool(bound) + extra)


def default_text(field: Any) -> str:
    """``required``, the default as JSON (``null``, ``true``, ``[0.35, 1.0]``), a factory's
    value, or ``json_schema_extra["doc_default"]`` (for a default computed at run time)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "doc_default" in extra:
        return str(extra["doc_default"])
    if field.is_required():
        return "**required**"
    if field.default is not PydanticUndefined:
        value = field.default
    else:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section defaults)"
    dumped = TypeAdapter(field.annotation).dump_python(value, mode="json")
    return f"`{json.dumps(dumped)}`"


# ------------------------------------------------------------------------------- the walk
def _heading(level: int, text: str) -> str:
    return "#" * min(level, 6) + " " + text


def _missing(model: type[BaseModel], prefix: str, seen: set) -> Iterator[str]:
    if model in seen:
        return
    seen.add(model)
    for name, f in model.model_fields.items():
        if not (f.description or "").strip():
            yield f"{model.__module__}.{model.__qualname__}.{name} (key {prefix}{name})"
        for sub, in_list in nested_models(f.annotation):
            yield from _missing(sub, f"{prefix}{name}{'[]' if in_list else ''}.", seen)


def check_descriptions(*models: tuple[type[BaseModel], str]) -> None:
    """Raise :class:`MissingDescriptionError` naming each field (of ``(model, key prefix)``
    and every model nested in it) without a description."""
    seen: set = set()
    missing = [m for model, prefix in models for m in _missing(model, prefix, seen)]
    if missing:
        raise MissingDescriptionError(
            "fields without a description (add Field(..., description=...); the reference "
            f"{DEFAULT_OUT} is generated from them):\n  " + "\n  ".join(missing))


def _row(key: str, f: Any, note: str = "") -> str:
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    typ = extra.get("doc_type") or type_text(f.annotation)
    rng = range_text(f)
    desc = md_escape(f.description.strip(), cell=True) + note
    cells = [f"`{key}`", f"`{md_escape(typ, cell=True)}`", default_text(f),
             f"`{rng}`" if rng else "", desc]
    return "| " + " | ".join(cells) + " |"


_TABLE_HEAD = ["| Key | Type | Default | Range | Description |", "|---|---|---|---|---|"]


def model_section(model: type[BaseModel], key: str, level: int, field: Any = None,
                  *, heading: Optional[str] = None, section_rows: bool = False,
                  stop: tuple = ()) -> list[str]:
    """Heading ``heading`` (default ``key``), the field's description and the model's
    docstring, a table of its leaf keys (``key.<field>``), then a subsection per nested model
    (one per member of a union of models: ``key: Model``; ``key[]`` inside a list).
    ``section_rows``: also a row for each plain nested section; ``stop``: models not expanded
    (a row only)."""
    lines = [_heading(level, heading or key), ""]
    doc = _docstring(model)
    if field is not None:
        lead = _sentence(md_escape(field.description))
        if not _same_start(doc, lead):
            lines += [lead, ""]
    if doc:
        lines += [doc, ""]
    prefix = f"{key}." if key else ""
    rows, subs = [], []
    for name, f in model.model_fields.items():
        dotted = prefix + name
        models = [] if f.annotation in stop else nested_models(f.annotation)
        plain = len(models) == 1 and models[0][0] is f.annotation
        links = []
        for sub, in_list in models:
            sub_key = f"{dotted}[]" if in_list else dotted
            title = sub_key if len(models) == 1 else f"{sub_key}: {sub.__name__}"
            subs.append(model_section(sub, sub_key, level + 1, None if len(models) > 1 else f,
                                      heading=title, stop=stop))
            links.append(f"[{title}](#{github_anchor(title)})")
        if not plain or section_rows:
            note = f"; keys: {', '.join(links)}" if links else ""
            rows.append(_row(dotted, f, note))
    if rows:
        lines += _TABLE_HEAD + rows + [""]
    for sub in subs:
        lines += sub
    return lines


# ------------------------------------------------------------------------------- the page
def _sources() -> tuple[type[BaseModel], type[BaseModel]]:
    from cnn_ray.config import TrainConfig
    from cnn_ray.tune.jobs import SweepFile

    return TrainConfig, SweepFile


def _intro(config: type[BaseModel]) -> list[str]:
    sections = list(config.model_fields)
    toc = [f"- [{s}](#{github_anchor(s)})" for s in sections]
    toc += ["- [Sweep file](#sweep-file)", "- [Search space](#search-space)"]
    return [
        f"_Generated by `{COMMAND}` from the pydantic models (`cnn_ray/config.py`, "
        "`cnn_ray/config_recipe.py`, `cnn_ray/tune/settings.py`, `cnn_ray/tune/jobs.py`, "
        f"`cnn_ray/tune/space.py`). Do not edit it by hand: change the models' field "
        f"descriptions and run `{COMMAND}` (`{COMMAND} --check` tells whether it is stale)._",
        "",
        "# Configuration reference",
        "",
        "A run is one YAML recipe (`cnn-ray train --config RECIPE.yaml [key=value ...]`) with "
        "the sections below; a sweep file adds a search space and the sweep's settings. Keys "
        "are dotted paths: `optim.lr` is `lr` in the recipe's `optim:` mapping and "
        "`optim.lr=0.05` on the command line. An unknown key anywhere is an error naming it.",
        "",
        "Reading the tables: `\"a\" | \"b\"` is one of these strings; `T | None` may also be "
        "`null`; `[float, float]` is a list of exactly these items; `mapping` is a section (its "
        "keys follow). Defaults are written as JSON (`null`, `true`, `[0.35, 1.0]`); "
        "**required** keys have none. Ranges: `[a, b]` includes both ends, `(a, b]` excludes "
        "`a`; `>= a` has no upper bound.",
        "",
        "Sections:",
        "",
        *toc,
        "",
    ]


def _sweep_file(sweep_model: type[BaseModel], config: type[BaseModel]) -> list[str]:
    lines = model_section(sweep_model, "", 2, section_rows=True, stop=(config,))
    lines[0] = _heading(2, "Sweep file")
    body = [
        "`cnn-ray tune --config SWEEP.yaml [--resume] [key=value ...]` reads a sweep file; "
        "`base` (a recipe path is read relative to the sweep file) holds the keys of the "
        "sections above. Overrides `key=value` apply to the whole file after `base` is read "
        "in: `base.run.storage_path=/x`, `sweep.num_samples=4`, `scheduler.kind=fifo`, "
        "`space.optim.lr={loguniform: [0.001, 0.1]}` (a dotted space key is matched as "
        "written).",
        "",
        "```yaml",
        "base: ../configs/cifar10.yaml",
        "space:",
        "  optim.lr: {loguniform: [0.01, 1.0]}",
        "sweep: {num_samples: 16, metric: val_top1, mode: max}",
        "scheduler: {kind: asha, grace_period: 1, reduction_factor: 3}",
        "searcher: {kind: random, seed: 0}",
        "```",
        "",
    ]
    return lines[:2] + body + lines[2:]


def render_reference() -> str:
    """The whole ``docs/config.md`` text (deterministic; no machine-dependent value).

    Raises:
        MissingDescriptionError: a config or sweep field has no description.
    """
    from cnn_ray.config_reference_space import search_space_section

    config, sweep_model = _sources()
    check_descriptions((config, ""), (sweep_model, ""))
    lines = _intro(config)
    for name, f in config.model_fields.items():
        lines += model_section(f.annotation, name, 2, f)
    lines += _sweep_file(sweep_model, config)
    lines += search_space_section()
    text = "\n".join(lines).rstrip("\n") + "\n"
    anchors = [github_anchor(ln.lstrip("#").strip()) for ln in lines if re.match(r"#+ ", ln)]
    dup = sorted({a for a in anchors if anchors.count(a) > 1})
    if dup:
        raise AssertionError(f"headings with the same anchor: {dup}")
    return text


def reference_main(out: str = DEFAULT_OUT, *, check: bool = False) -> int:
    """``cnn-ray config-reference [--out FILE] [--check]``: write the reference to ``out``, or
    with ``check`` compare it and return 1 (naming the command to run) when it differs."""
    text = render_reference()
    path = Path(out)
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            print(f"{out} is up to date")
            return 0
        why = "does not exist" if current is None else "differs from the config models"
        print(f"{out} {why}: run `{COMMAND}" + (f" --out {out}" if out != DEFAULT_OUT else "")
              + "` to regenerate it", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


__all__ = ["COMMAND", "DEFAULT_OUT", "MissingDescriptionError", "check_descriptions",
           "default_text", "model_section", "nested_models", "range_text", "reference_main",
           "render_reference", "type_text"]
