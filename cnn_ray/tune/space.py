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

**Validation**: :func:`cnn_ray.tune.space_parse.parse_space` turns a mapping like the one above
into a :class:`SearchSpace`, checking every key and value against the base config before
anything runs; errors are :class:`~cnn_ray.config.ConfigError` naming ``space.<dotted key>``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import merge_dotted


@dataclass(frozen=True)
class Distribution:
    """One distribution kind of a search space: how it is written and what it draws.

    ``n_args`` is the number of numbers in ``[..]`` (None: a non-empty list of values);
    ``optuna`` whether Optuna TPE accepts it, ``optuna_note`` how (or what to use instead).
    :func:`cnn_ray.tune.space_parse.parse_space` checks arguments and the Optuna restriction
    from this table, and :mod:`cnn_ray.config_reference` renders it in ``docs/config.md``.
    """

    kind: str
    args: str
    n_args: Optional[int]
    meaning: str
    example: str
    optuna: bool
    optuna_note: str


DISTRIBUTIONS: tuple[Distribution, ...] = (
    Distribution("loguniform", "[low, high]", 2, "a float, log-uniform in [low, high]; "
                 "0 < low < high", "optim.lr: {loguniform: [1.0e-3, 1.0]}", True,
                 "suggest_float(log=True)"),
    Distribution("uniform", "[low, high]", 2, "a float, uniform in [low, high]; low < high",
                 "optim.momentum: {uniform: [0.8, 0.95]}", True, "suggest_float"),
    Distribution("quniform", "[low, high, q]", 3, "uniform in [low, high], rounded to a "
                 "multiple of q and kept in [low, high]; an int when all three are ints; "
                 "low < high, q > 0", "optim.warmup_epochs: {quniform: [0, 2, 0.5]}", True,
                 "suggest_int / suggest_float with step=q (values low + k * q)"),
    Distribution("randint", "[low, high]", 2, "an integer in [low, high], both ends included; "
                 "integers, low <= high", "model.depth: {randint: [1, 3]}", True,
                 "suggest_int"),
    Distribution("choice", "[v1, v2, ...]", None, "one of the values (any YAML values, lists "
                 "too), uniformly; searcher grid: every value, crossed", "optim.batch_size: {choice: [64, 128, 256]}",
                 True, "suggest_categorical; scalar values only (bool, int, float, str, null)"),
    Distribution("grid", "[v1, v2, ...]", None, "every value, each crossed with every "
                 "sampled configuration (num_samples x the grid sizes trials)",
                 "optim.optimizer: {grid: [sgd, adamw]}", False,
                 "no Optuna (TPE) form; use choice, or searcher.kind random/grid"),
)
DISTRIBUTION = {d.kind: d for d in DISTRIBUTIONS}
KINDS = tuple(DISTRIBUTION)  # the kinds a space accepts, in the table's order
FAMILY_KEY = "model.family"
# The ModelConfig fields that are architecture knobs (ModelConfig.knobs()); each family accepts
# a subset (cnn_ray.models.model_knobs).
MODEL_KNOBS = ("width_mult", "depth", "kernel_size", "separable", "dropout")
OPTUNA_BRANCH_SEP = "@"  # Optuna name of a family's key: "model.width_mult@resnet9"
POINT_KEY = "point"      # a trial's Tune config is {"point": {dotted key: value}}


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

    def all_params(self) -> Iterable[Param]:
        """Every param: the unconditional ones, then each family's."""
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


# ------------------------------------------------------------------------------ configs
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
    cfg = TrainConfig.from_dict(merge_dotted(raw, values, where=source), source=source,
                                check_paths=False)
    check_model_knobs(cfg, source)
    return cfg


def check_model_knobs(cfg: TrainConfig, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming ``model.<knob>`` if ``cfg.model.name`` rejects a knob."""
    from cnn_ray.models import list_models, model_knobs

    if not cfg.model.name.startswith("timm/") and cfg.model.name not in list_models():
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


__all__ = ["DISTRIBUTION", "DISTRIBUTIONS", "Distribution", "KINDS", "Param", "SearchSpace", "OptunaDefineByRun", "trial_config",
           "check_model_knobs", "validate_variants", "canonical_config", "format_value"]
