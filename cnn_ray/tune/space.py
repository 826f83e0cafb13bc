"""Search spaces over ``TrainConfig`` keys, with a conditional architecture block (no Ray here).

A space is a mapping from dotted config keys to a distribution, written as in a sweep file::

    optim.lr: {loguniform: [1.0e-3, 1.0]}        # log-uniform in [low, high]
    optim.weight_decay: {loguniform: [1.0e-5, 1.0e-3]}
    optim.momentum: {uniform: [0.8, 0.95]}       # uniform in [low, high]
    optim.warmup_epochs: {quniform: [0, 2, 0.5]} # uniform, rounded to a multiple of q
    optim.batch_size: {choice: [64, 128, 256]}   # one of the values, uniformly
    optim.optimizer: {grid: [sgd, adamw]}        # every value, crossed with every sample
    model.depth: {randint: [1, 3]}               # an integer, both ends included
    optim.label_smoothing: 0.1                   # a constant
    model:
      family:                                    # conditional: pick a family, then its knobs
        resnet9:
          model.width_mult: {choice: [0.5, 1.0]}
          model.depth: {randint: [1, 2]}
        mobilenet_v2:
          model.width_mult: {choice: [0.5, 1.0]}
        simple_cnn: {}                           # no knobs: the model's defaults

Keys may also be nested (``optim: {lr: {loguniform: [...]}}``); both forms flatten to dotted keys.
A distribution is a one-key mapping ``{kind: args}``; any other non-mapping value is a constant.

**Conditional architecture.** ``model.family`` maps each model family (a registered model name)
to the keys sampled only when that family is chosen; the family itself is ``model.name``. A knob
that one family accepts and another does not (``model.kernel_size`` is a knob of resnet9 but
not of mobilenet_v2, see :func:`cnn_ray.models.model_knobs`) can therefore be searched without
ever producing an invalid model. The design: for the random/grid searchers this module draws
the configurations itself (seeded numpy, family first, then that family's keys) and Tune's
``BasicVariantGenerator`` runs the fixed list (a ``grid_search`` over whole configurations), so
every configuration is validated before anything runs and two runs (ASHA and FIFO) can share
the same list; for Optuna TPE the same
space becomes a define-by-run function (:meth:`SearchSpace.optuna_define_by_run`): TPE suggests
the family, then only that family's keys (their Optuna names carry ``@family`` so each family
keeps its own distribution; :func:`canonical_config` drops those names again).

**Validation** (:func:`parse_space`, before anything runs): every key must be a ``TrainConfig``
leaf field; keys that fix what the whole sweep shares (prepared data, trial resources, run
names) are refused; every choice/grid value and every range end must pass ``TrainConfig``
validation on top of the base config; every model knob must be accepted by every family it
can meet (``model_knobs``), including knobs set in the base config. Errors are
:class:`~cnn_ray.config.ConfigError` naming the key as ``space.<dotted key>``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from pydantic import BaseModel

from cnn_ray.config import ConfigError, TrainConfig

KINDS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
FAMILY_KEY = "model.family"
# The ModelConfig fields that are architecture knobs (ModelConfig.knobs()); each family accepts
# a subset (cnn_ray.models.model_knobs).
MODEL_KNOBS = ("width_mult", "depth", "kernel_size", "separable", "dropout")
OPTUNA_BRANCH_SEP = "@"  # Optuna name of a family's key: "model.width_mult@resnet9"
POINT_KEY = "point"      # a trial's Tune config is {"point": {dotted key: value}}

# Keys a trial may not change: the data is prepared once for the whole sweep, the trial
# resources are fixed by the sweep (they bound how many trials run at once), and the run name
# and storage are the trial's id and the sweep's directory.
_DATA_SAMPLABLE = {"data.shuffle", "data.shuffle_buffer", "data.prefetch_batches"}
_FIXED_REASONS = {
    "data.": "the data is prepared once and shared by every trial",
    "scaling.": "trial resources are fixed for the whole sweep (set sweep.workers_per_trial)",
    "run.name": "each trial's run is named after its trial id",
    "run.storage_path": "trials are stored under the sweep's directory",
}


# ------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class Param:
    """One searched key: ``key`` (dotted ``TrainConfig`` path), ``kind`` (one of :data:`KINDS`
    or ``"constant"``) and its ``args`` (``(low, high)``, ``(low, high, q)`` or the values)."""

    key: str
    kind: str
    args: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        """Draw one value (``grid`` draws uniformly too; enumeration is :func:`variants`'s job)."""
        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind in ("choice", "grid"):
            return a[int(rng.integers(len(a)))]
        if self.kind == "uniform":
            return float(rng.uniform(a[0], a[1]))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(a[0]), math.log(a[1]))))
        if self.kind == "quniform":
            v = round(float(rng.uniform(a[0], a[1])) / a[2]) * a[2]
            v = min(max(v, a[0]), a[1])
            return int(round(v)) if all(isinstance(x, int) for x in a) else float(v)
        if self.kind == "randint":
            return int(rng.integers(a[0], a[1] + 1))
        raise AssertionError(self.kind)

    def enumerated(self, enumerate_choices: bool) -> bool:
        """Whether :func:`variants` crosses every value instead of drawing one."""
        return self.kind == "grid" or (enumerate_choices and self.kind == "choice")

    def suggest(self, trial, name: str) -> Any:
        """Suggest a value on an ``optuna.Trial`` under the Optuna parameter ``name``."""
        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(a))
        if self.kind == "uniform":
            return trial.suggest_float(name, a[0], a[1])
        if self.kind == "loguniform":
            return trial.suggest_float(name, a[0], a[1], log=True)
        if self.kind == "quniform":
            if all(isinstance(x, int) for x in a):
                return trial.suggest_int(name, a[0], a[1], step=a[2])
            return trial.suggest_float(name, a[0], a[1], step=a[2])
        if self.kind == "randint":
            return trial.suggest_int(name, a[0], a[1])
        raise AssertionError(f"{self.kind} has no Optuna form")  # grid: refused by parse_space

    def candidate_values(self) -> list:
        """Values that must pass config validation: every choice, or both ends of a range."""
        if self.kind in ("constant", "choice", "grid"):
            return list(self.args)
        if self.kind in ("randint",):
            return [int(self.args[0]), int(self.args[1])]
        return [self.args[0], self.args[1]]

    def describe(self) -> str:
        return repr(self.args[0]) if self.kind == "constant" else f"{self.kind}{list(self.args)}"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: unconditional ``params`` (in the order written) and an
    optional conditional block ``families`` (family name -> that family's params)."""

    params: tuple[Param, ...]
    families: Optional[dict[str, tuple[Param, ...]]] = None
    raw: dict = field(default_factory=dict, compare=False)

    # -- introspection --------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every key a trial may set, in a stable order (the results table's columns)."""
        out = [p.key for p in self.params]
        if self.families is not None:
            out.append("model.name")
            for branch in self.families.values():
                out += [p.key for p in branch if p.key not in out]
        return out

    def families_possible(self, base: TrainConfig) -> list[str]:
        """The model families trials can use (the family block, a ``model.name`` param, or base)."""
        if self.families is not None:
            return list(self.families)
        for p in self.params:
            if p.key == "model.name":
                return [str(v) for v in p.candidate_values()]
        return [base.model.name]

    def has_grid(self) -> bool:
        return any(p.kind == "grid" for p in self.all_params())

    def all_params(self) -> Iterable[Param]:
        yield from self.params
        for branch in (self.families or {}).values():
            yield from branch

    # -- random / grid ----------------------------------------------------------------------
    def variants(self, num_samples: int, seed: int, *, enumerate_choices: bool = False) -> list[dict]:
        """Draw the configurations of a random (or grid) search, family first.

        Each of ``num_samples`` repeats crosses every ``grid`` key (and, with
        ``enumerate_choices``, every ``choice`` key and every family); the other keys are drawn
        from a ``numpy`` generator seeded with ``seed``, so the same arguments give the same list.
        Returns flat ``{dotted key: value}`` dicts in the order of :meth:`keys`.
        """
        rng = np.random.default_rng(seed)
        out: list[dict] = []
        grid = [p for p in self.params if p.enumerated(enumerate_choices)]
        for _ in range(num_samples):
            for combo in itertools.product(*(p.args for p in grid)):
                fixed = dict(zip((p.key for p in grid), combo))
                if self.families is None:
                    out.append(self._draw(self.params, fixed, rng))
                    continue
                names = list(self.families)
                chosen = names if enumerate_choices else [names[int(rng.integers(len(names)))]]
                for fam in chosen:
                    top = self._draw(self.params, fixed, rng)
                    branch = self.families[fam]
                    bgrid = [p for p in branch if p.enumerated(enumerate_choices)]
                    for bcombo in itertools.product(*(p.args for p in bgrid)):
                        bfixed = dict(zip((p.key for p in bgrid), bcombo))
                        out.append({**top, "model.name": fam, **self._draw(branch, bfixed, rng)})
        return out

    @staticmethod
    def _draw(params: Sequence[Param], fixed: dict, rng: np.random.Generator) -> dict:
        return {p.key: fixed[p.key] if p.key in fixed else p.sample(rng) for p in params}

    # -- Optuna (TPE) -------------------------------------------------------------------------
    def optuna_define_by_run(self) -> "OptunaDefineByRun":
        """A define-by-run function for ``OptunaSearch(space=...)``: family, then its keys."""
        return OptunaDefineByRun(self)


class OptunaDefineByRun:
    """Picklable define-by-run space: ``fn(optuna_trial) -> {dotted key: value}``.

    The family is suggested as ``model.name``; a family's key is suggested under
    ``<key>@<family>`` (so TPE models each family's distribution separately) and returned under
    its plain key. Tune merges the suggested names into the trial config; use
    :func:`canonical_config` to drop the ``@`` names. All names carry the ``point/`` prefix.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict:
        # Names are "point/<key>": OptunaSearch unflattens on "/", so the trial's Tune config
        # is {"point": {...}}, the same shape as for the random/grid searchers.
        pre = f"{POINT_KEY}/"
        out = {pre + p.key: p.suggest(trial, pre + p.key) for p in self.space.params}
        if self.space.families is not None:
            fam = trial.suggest_categorical(pre + "model.name", list(self.space.families))
            out[pre + "model.name"] = fam
            for p in self.space.families[fam]:
                out[pre + p.key] = p.suggest(trial, f"{pre}{p.key}{OPTUNA_BRANCH_SEP}{fam}")
        return out


def canonical_config(config: dict) -> dict:
    """A trial's sampled values as flat ``{dotted key: value}``.

    Accepts a Tune trial config (``{"point": {...}}``) or the flat dict itself, and drops
    searcher-internal names (Optuna's ``<key>@<family>``).
    """
    if set(config) == {POINT_KEY} and isinstance(config[POINT_KEY], dict):
        config = config[POINT_KEY]
    return {k: v for k, v in config.items() if OPTUNA_BRANCH_SEP not in k}


# ------------------------------------------------------------------------------ parsing
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
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"expected a non-empty list of values, got {args!r}")
        return tuple(tuple(a) if isinstance(a, list) else a for a in args)
    n = 3 if kind == "quniform" else 2
    shape = "[low, high, q]" if n == 3 else "[low, high]"
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
    if key in _DATA_SAMPLABLE:
        return None
    for prefix, reason in _FIXED_REASONS.items():
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
        if fam not in registered:
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
            if p.kind == "grid":
                errors.append(f"space.{p.key}: grid has no Optuna (TPE) form; use choice, or "
                              "searcher.kind random/grid")
            if p.kind == "choice" and not all(
                    v is None or isinstance(v, (bool, int, float, str)) for v in p.args):
                errors.append(f"space.{p.key}: Optuna choices must be scalars, got {list(p.args)}")
    if errors:
        return
    # Every value (or range end) must pass the typed config on top of the base.
    base_raw = base.to_dict()
    for fam_name, params in [(None, space.params)] + list((space.families or {}).items()):
        prefix = f"space.{FAMILY_KEY}.{fam_name}." if fam_name else "space."
        for p in params:
            for value in p.candidate_values():
                raw = set_dotted(base_raw, {p.key: value, **({"model.name": fam_name} if fam_name else {})})
                try:
                    TrainConfig.from_dict(raw, source="x", check_paths=False)
                except ConfigError as exc:
                    msg = _first_reason(str(exc))
                    errors.append(f"{prefix}{p.key}: value {value!r} is invalid: {msg}")
                    break


def _first_reason(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip().startswith("x:")]
    return "; ".join(ln.removeprefix("x: ") for ln in lines) or message


# ------------------------------------------------------------------------------ configs
def set_dotted(raw: dict, values: dict[str, Any]) -> dict:
    """A deep copy of ``raw`` with each dotted key of ``values`` set (tuples become lists)."""
    out = json.loads(json.dumps(raw))
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return out


def trial_config(base: dict | TrainConfig, sampled: dict, *, source: str = "trial",
                 **run: Any) -> TrainConfig:
    """Base config + a trial's sampled values -> validated :class:`TrainConfig`.

    ``run`` sets ``run.*`` fields (``name=``, ``storage_path=``). Data paths are not checked
    (the driver checked them; trials may run in another working directory).

    Raises:
        ConfigError: a bad value or combination, naming the key (``optim.batch_size``), or a
            model knob the chosen family does not accept (``model.kernel_size``).
    """
    raw = base.to_dict() if isinstance(base, TrainConfig) else base
    values = dict(canonical_config(sampled))
    values.update({f"run.{k}": v for k, v in run.items()})
    cfg = TrainConfig.from_dict(set_dotted(raw, values), source=source, check_paths=False)
    check_model_knobs(cfg, source)
    return cfg


def check_model_knobs(cfg: TrainConfig, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming ``model.<knob>`` if ``cfg.model.name`` rejects a knob."""
    from cnn_ray.models import list_models, model_knobs

    if cfg.model.name not in list_models():
        raise ConfigError(f"{source}: model.name: unknown model {cfg.model.name!r}; registered: "
                          f"{list_models()}")
    accepted = model_knobs(cfg.model.name)
    for knob in cfg.model.knobs():
        if knob not in accepted:
            raise ConfigError(f"{source}: model.{knob}: model {cfg.model.name!r} does not accept "
                              f"this knob; accepted: {sorted(accepted)}")


def validate_variants(base: TrainConfig, variants: Sequence[dict]) -> list[TrainConfig]:
    """Build every sampled configuration before anything runs (bad combinations fail here).

    Raises:
        ConfigError: naming the variant (its index and values) and the bad key.
    """
    return [trial_config(base, v, source=f"sampled configuration #{i} {v}")
            for i, v in enumerate(variants)]


def format_value(value: Any) -> str:
    """Short text for a sampled value in tables and plot legends."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["KINDS", "Param", "SearchSpace", "OptunaDefineByRun", "parse_space", "trial_config",
           "check_model_knobs", "validate_variants", "canonical_config", "set_dotted",
           "format_value"]
