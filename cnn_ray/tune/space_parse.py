"""Parsing and validating a search space (:func:`parse_space`), before anything runs (no Ray).

Every key must be a ``TrainConfig`` leaf field; keys that fix what the whole sweep shares
(prepared data, trial resources, run names) are refused; every choice/grid value and every
range end must pass ``TrainConfig`` validation on top of the base config; every model knob must
be accepted by every family it can meet (``model_knobs``), including knobs set in the base
config. Errors are :class:`~cnn_ray.config.ConfigError` naming the key as
``space.<dotted key>``; the space's format is described in :mod:`cnn_ray.tune.space`.
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

from pydantic import BaseModel

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import merge_dotted
from cnn_ray.tune.space import (DISTRIBUTION, FAMILY_KEY, KINDS, MODEL_KNOBS, Param,
                                SearchSpace)

# Keys a trial may not change: the data is prepared once for the whole sweep, the trial
# resources are fixed by the sweep (they bound how many trials run at once), and the run name
# and storage are the trial's id and the sweep's directory. A key ending in "." is a prefix
# (every key of that section); SEARCHABLE_DATA_KEYS are the data keys a trial may still change
# (they act after the shared prepare step). docs/config.md renders both.
SEARCHABLE_DATA_KEYS = ("data.shuffle", "data.shuffle_buffer", "data.prefetch_batches")
FIXED_KEYS = {
    "data.": "the data is prepared once and shared by every trial",
    "scaling.": "trial resources are fixed for the whole sweep (set sweep.workers_per_trial)",
    "run.name": "each trial's run is named after its trial id",
    "run.storage_path": "trials are stored under the sweep's directory",
}


def parse_space(raw: Any, base: TrainConfig, *, searcher: str = "random") -> SearchSpace:
    """Validate a search-space mapping against ``base`` and return a :class:`SearchSpace`.

    Nothing runs and Ray is not needed. ``searcher`` is ``random``, ``grid`` or ``optuna``
    (``grid`` keys and non-scalar choices have no Optuna form).

    Raises:
        ConfigError: naming each offending key as ``space.<key>``: an unknown key (not a
            ``TrainConfig`` field; with a suggestion), a section instead of a value, a key the
            sweep fixes, a malformed distribution, a value the config rejects, an unknown model
            family, or a model knob a family it can meet does not accept.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("space: expected a non-empty mapping of config keys to distributions")
    flat = _flatten(raw, "")
    errors: list[str] = []
    params: list[Param] = []
    families: Optional[dict[str, tuple[Param, ...]]] = None
    for key, value in flat.items():
        if key == FAMILY_KEY:
            families = _parse_families(value, errors)
            continue
        p = _parse_param(key, value, "space.", errors)
        if p is not None:
            params.append(p)
    space = SearchSpace(tuple(params), families, raw=raw)
    if not errors:
        _check_semantics(space, base, searcher, errors)
    if errors:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(errors))
    return space


def _is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def _flatten(raw: dict, prefix: str) -> dict[str, Any]:
    """Nested mappings -> dotted keys; stops at distributions, constants and ``model.family``."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if key == FAMILY_KEY or _is_distribution(v) or not isinstance(v, dict) or not v:
            items = {key: v}
        elif any(kind in v for kind in KINDS):
            items = {key: v}  # a malformed distribution: _parse_param names it
        else:
            items = _flatten(v, key + ".")
        for name, value in items.items():
            if name in out:
                raise ConfigError(f"space.{name}: given twice (dotted and nested forms)")
            out[name] = value
    return out


def _parse_families(value: Any, errors: list[str]) -> Optional[dict[str, tuple[Param, ...]]]:
    where = f"space.{FAMILY_KEY}"
    if not isinstance(value, dict) or not value:
        errors.append(f"{where}: expected a mapping of model family -> its keys, e.g. "
                      "{resnet9: {model.width_mult: {choice: [0.5, 1.0]}}, simple_cnn: {}}")
        return None
    out: dict[str, tuple[Param, ...]] = {}
    for fam, branch in value.items():
        bwhere = f"{where}.{fam}"
        if branch is None:
            branch = {}
        if not isinstance(branch, dict):
            errors.append(f"{bwhere}: expected a mapping of config keys to distributions "
                          f"(or {{}}), got {branch!r}")
            continue
        try:
            flat = _flatten(branch, "") if branch else {}
        except ConfigError as exc:
            errors.append(str(exc).replace("space.", f"{bwhere}.", 1))
            continue
        params = []
        for key, v in flat.items():
            if key in ("model.name", FAMILY_KEY):
                errors.append(f"{bwhere}.{key}: not allowed inside a family (the family sets "
                              "model.name)")
                continue
            p = _parse_param(key, v, f"{bwhere}.", errors)
            if p is not None:
                params.append(p)
        out[str(fam)] = tuple(params)
    return out


def _parse_param(key: str, value: Any, prefix: str, errors: list[str]) -> Optional[Param]:
    where = prefix + key
    problem = _key_problem(key)
    if problem:
        leaf, _, kind = key.rpartition(".")
        if leaf and not isinstance(value, dict) and not _key_problem(leaf):
            # {optim.lr: {logunifrom: [...]}} flattens to optim.lr.logunifrom: a bad kind
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"{prefix}{leaf}: {kind!r} is not a distribution kind; expected "
                          f"{{kind: args}} with kind in {list(KINDS)}{hint}")
        else:
            errors.append(f"{where}: {problem}")
        return None
    if not isinstance(value, dict):
        return Param(key, "constant", (value,))
    if len(value) != 1 or next(iter(value)) not in KINDS:
        errors.append(f"{where}: expected one of {{kind: args}} with kind in {list(KINDS)}, "
                      f"got {value!r}")
        return None
    kind, args = next(iter(value.items()))
    try:
        return Param(key, kind, _check_args(kind, args))
    except ValueError as exc:
        errors.append(f"{where}: {kind}: {exc}")
        return None


def _check_args(kind: str, args: Any) -> tuple:
    spec = DISTRIBUTION[kind]
    if spec.n_args is None:  # choice, grid
        if not isinstance(args, list) or not args:
            raise ValueError(f"expected a non-empty list of values, got {args!r}")
        return tuple(tuple(a) if isinstance(a, list) else a for a in args)
    n, shape = spec.n_args, spec.args
    if (not isinstance(args, list) or len(args) != n
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise ValueError(f"expected {shape} numbers, got {args!r}")
    low, high = args[0], args[1]
    if kind == "randint":
        if not all(isinstance(a, int) for a in args):
            raise ValueError(f"expected {shape} integers (both ends included), got {args!r}")
        if low > high:
            raise ValueError(f"expected low <= high, got {args!r}")
        return (low, high)
    if kind == "loguniform" and not 0 < low < high:
        raise ValueError(f"expected 0 < low < high, got {args!r}")
    if kind in ("uniform", "quniform") and not low < high:
        raise ValueError(f"expected low < high, got {args!r}")
    if kind == "quniform" and not args[2] > 0:
        raise ValueError(f"expected q > 0, got {args!r}")
    return tuple(args)


def _key_problem(key: str) -> Optional[str]:
    """Why ``key`` cannot be searched (unknown, a section, fixed by the sweep), or None."""
    node: type[BaseModel] = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = node.model_fields
        if part not in fields:
            here = ".".join(parts[:i])
            options = [f"{here}.{f}" if here else f for f in fields]
            close = difflib.get_close_matches(".".join(parts[: i + 1]), options, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            if i == 0 and part in MODEL_KNOBS + ("name",):
                hint = f"; did you mean model.{part}?"
            return f"unknown key (not a TrainConfig field){hint}"
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if i == len(parts) - 1:
                return "is a config section, not a value: search its fields (e.g. " \
                       f"{key}.{next(iter(ann.model_fields))})"
            node = ann
        elif i != len(parts) - 1:
            return f"unknown key ({'.'.join(parts[: i + 1])} is a value, not a section)"
    if key in SEARCHABLE_DATA_KEYS:
        return None
    for prefix, reason in FIXED_KEYS.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return f"cannot be searched: {reason}"
    return None


def _check_semantics(space: SearchSpace, base: TrainConfig, searcher: str, errors: list[str]) -> None:
    from cnn_ray.models import list_models, model_knobs

    top = {p.key: p for p in space.params}
    if space.families is not None and "model.name" in top:
        errors.append("space.model.name: cannot be searched together with space.model.family "
                      "(the family block sets model.name)")
        return
    registered = list_models()
    fams = space.families_possible(base)
    where_fam = f"space.{FAMILY_KEY}" if space.families is not None else (
        "space.model.name" if "model.name" in top else "base.model.name")
    for fam in fams:
        if fam not in registered and not fam.startswith("timm/"):
            errors.append(f"{where_fam}: unknown model {fam!r}; registered: {registered}")
    if errors:
        return
    accepted = {fam: set(model_knobs(fam)) for fam in fams}
    # Knobs set in the base config meet every family.
    for knob in base.model.knobs():
        for fam in fams:
            if knob not in accepted[fam]:
                errors.append(f"base.model.{knob}: set in the base config, but model family "
                              f"{fam!r} ({where_fam}) does not accept it; accepted: "
                              f"{sorted(accepted[fam])}")
    # Unconditional knobs meet every family; a family's own knobs only that family.
    for p in space.params:
        knob = p.key.removeprefix("model.")
        if p.key.startswith("model.") and knob in MODEL_KNOBS:
            bad = [fam for fam in fams if knob not in accepted[fam]]
            if bad:
                errors.append(f"space.{p.key}: model family {bad[0]!r} ({where_fam}) does not "
                              f"accept knob {knob!r}; sample it per family under "
                              f"space.{FAMILY_KEY}.<family>")
    for fam, branch in (space.families or {}).items():
        for p in branch:
            knob = p.key.removeprefix("model.")
            if p.key.startswith("model.") and knob in MODEL_KNOBS and knob not in accepted[fam]:
                errors.append(f"space.{FAMILY_KEY}.{fam}.{p.key}: model family {fam!r} does not "
                              f"accept knob {knob!r}; accepted: {sorted(accepted[fam])}")
            if p.key in top:
                errors.append(f"space.{FAMILY_KEY}.{fam}.{p.key}: also searched unconditionally "
                              f"as space.{p.key}; keep one")
    if searcher == "optuna":
        for p in space.all_params():
            if p.kind in DISTRIBUTION and not DISTRIBUTION[p.kind].optuna:
                errors.append(f"space.{p.key}: {p.kind} has {DISTRIBUTION[p.kind].optuna_note}")
            if p.kind == "choice" and not all(
                    v is None or isinstance(v, (bool, int, float, str)) for v in p.args):
                errors.append(f"space.{p.key}: Optuna choices must be scalars, got {list(p.args)}")
    if not errors:
        _check_values(space, base, errors)


def _check_values(space: SearchSpace, base: TrainConfig, errors: list[str]) -> None:
    """Every value (or range end) must pass the typed config on top of the base."""
    base_raw = base.to_dict()
    for fam_name, params in [(None, space.params)] + list((space.families or {}).items()):
        prefix = f"space.{FAMILY_KEY}.{fam_name}." if fam_name else "space."
        for p in params:
            for value in p.candidate_values():
                raw = merge_dotted(base_raw, {p.key: value,
                                              **({"model.name": fam_name} if fam_name else {})})
                try:
                    TrainConfig.from_dict(raw, source="x", check_paths=False)
                except ConfigError as exc:
                    msg = _first_reason(str(exc))
                    errors.append(f"{prefix}{p.key}: value {value!r} is invalid: {msg}")
                    break


def _first_reason(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip().startswith("x:")]
    return "; ".join(ln.removeprefix("x: ") for ln in lines) or message


__all__ = ["FIXED_KEYS", "SEARCHABLE_DATA_KEYS", "parse_space"]
