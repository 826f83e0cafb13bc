"""Config files and ``a.b=value`` overrides: the one place that reads YAML into configs.

* :func:`read_yaml`: a YAML file -> a mapping (:class:`~cnn_ray.config.ConfigError` naming the
  file on any problem).
* :func:`apply_overrides`: ``key.path=value`` strings (values parsed as YAML) set into a nested
  dict. The one dotted-key parser of cnn_ray: the CLI, the sweep file
  (:mod:`cnn_ray.tune.jobs`) and the search space (:mod:`cnn_ray.tune.space`, through
  :func:`merge_dotted`) all use it.
* :func:`load_train_config`: recipe + overrides -> validated :class:`~cnn_ray.config.TrainConfig`.

Dotted keys descend through nested mappings; at each level a key that is itself written with
dots (``optim.lr`` in a sweep file's ``space``) is matched whole, longest first, so
``space.optim.lr.loguniform=[0.001, 0.1]`` edits ``space["optim.lr"]``. Missing sections are
created. Unknown keys are not checked here: the typed configs name them later.

No Ray here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from cnn_ray.config import ConfigError, TrainConfig


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``).

    Raises:
        ConfigError: naming the file when it is missing, not valid YAML, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str, *, source: str = "command line") -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)`` with ``value`` parsed as YAML (``[0.5, 1.0]`` is a
    list, ``true`` a bool, ``{uniform: [0, 1]}`` a mapping); text that is not valid YAML stays
    a string, and ``a.b=`` gives ``""``.

    Raises:
        ConfigError: naming ``source`` and the override, for one without ``=`` or with an
            empty key.
    """
    if "=" not in item:
        raise ConfigError(f"{source}: override {item!r}: expected key.path=value")
    key, _, text = item.partition("=")
    key = ".".join(p for p in key.strip().split(".") if p)
    if not key:
        raise ConfigError(f"{source}: override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_dotted(tree: dict, key: str, value: Any, *, where: str = "config") -> None:
    """Set ``tree[...]`` at the dotted ``key`` to ``value``, in place (tuples become lists).

    At each level the longest dotted prefix already present as a key is descended into; a
    missing section is created. ``where`` starts the error message.

    Raises:
        ConfigError: ``"<where>: a.b is not a section"`` when the path runs through a value.
    """
    value = list(value) if isinstance(value, tuple) else value
    node, parts, done = tree, [p for p in key.split(".") if p], []
    while True:
        rest = ".".join(parts)
        if rest in node or len(parts) == 1:
            node[rest] = value
            return
        for j in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:j])
            if head in node:
                break
        else:
            j, head = 1, parts[0]
            node[head] = {}
        if not isinstance(node[head], dict):
            raise ConfigError(f"{where}: {'.'.join(done + [head])} is not a section")
        node, parts, done = node[head], parts[j:], done + [head]


def merge_dotted(raw: dict, values: dict[str, Any], *, where: str = "config") -> dict:
    """A deep copy of the plain-data ``raw`` with each dotted key of ``values`` set
    (:func:`set_dotted`); ``raw`` is not changed.

    Raises:
        ConfigError: a key that runs through a value (``optim.lr.x`` when ``optim.lr`` is 0.1).
    """
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    for key, value in values.items():
        set_dotted(out, key, value, where=where)
    return out


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], *,
                    source: str = "command line") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (:func:`parse_override`) to a copy of a nested dict.

    Raises:
        ConfigError: an override without ``=``, with an empty key, or one that descends into a
            value, naming the override. Unknown keys are caught later by the typed config.
    """
    out = json.loads(json.dumps(raw))
    for item in overrides:
        key, value = parse_override(item, source=source)
        set_dotted(out, key, value, where=f"{source}: override {item!r}")
    return out


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                      check_paths: bool = True) -> TrainConfig:
    """YAML recipe + ``a.b=value`` overrides -> validated :class:`TrainConfig`.

    Relative data paths in the file are resolved against the current directory (the job's
    working directory), as a user typing the command expects.

    Raises:
        ConfigError: the file cannot be read, an override is malformed, or a key is invalid
            (named as a dotted path after the file name).
    """
    raw = apply_overrides(read_yaml(path), overrides)
    return TrainConfig.from_dict(raw, source=str(path), check_paths=check_paths)


__all__ = ["read_yaml", "parse_override", "set_dotted", "merge_dotted", "apply_overrides",
           "load_train_config"]
