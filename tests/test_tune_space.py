"""Sweep spaces, sweep files and trial configs: validation by key name, conditional sampling.

No Ray runs here: everything is checked before a sweep starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnn_ray.cli import main
from cnn_ray.config import ConfigError, ModelConfig, TrainConfig
from cnn_ray.config_io import apply_overrides
from cnn_ray.models import create_model, list_models, model_knobs
from cnn_ray.tune.jobs import load_sweep_file
from cnn_ray.tune.plan import SweepPlan, fit_concurrency
from cnn_ray.tune.settings import SweepSettings
from cnn_ray.tune.space import MODEL_KNOBS, canonical_config, trial_config
from cnn_ray.tune.space_parse import parse_space

REPO = Path(__file__).resolve().parents[1]

ARCH_SPACE = {
    "optim.lr": {"loguniform": [1e-3, 1.0]},
    "optim.weight_decay": {"loguniform": [1e-5, 1e-3]},
    "optim.batch_size": {"choice": [64, 128]},
    "optim.optimizer": {"choice": ["sgd", "adamw"]},
    "model": {"family": {
        "resnet9": {"model.width_mult": {"choice": [0.25, 0.5]}, "model.depth": {"randint": [1, 2]},
                    "model.kernel_size": {"choice": [3, 5]},
                    "model.separable": {"choice": [False, True]}},
        "mobilenet_v2": {"model.width_mult": {"choice": [0.5, 1.0]},
                         "model.dropout": {"uniform": [0.0, 0.3]}},
        "dwsep_cnn": {"model.depth": {"randint": [1, 3]}, "model.kernel_size": {"grid": [3, 5]}},
        "simple_cnn": {},
    }},
}


@pytest.fixture
def base(tmp_path) -> TrainConfig:
    return TrainConfig.from_dict({"data": {"train": str(tmp_path)}, "model": {"name": "simple_cnn"},
                                  "run": {"storage_path": str(tmp_path / "runs")}})


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_model_knobs_match_the_config():
    assert set(ModelConfig(width_mult=1, depth=1, kernel_size=3, separable=True,
                           dropout=0.1).knobs()) == set(MODEL_KNOBS)


def test_conditional_space_samples_only_valid_knobs(base):
    space = parse_space(ARCH_SPACE, base)
    configs = space.variants(400, seed=0)
    dwsep = sum(c["model.name"] == "dwsep_cnn" for c in configs)
    assert len(configs) == 400 + dwsep // 2  # dwsep_cnn's grid key yields 2 configs per draw
    seen = set()
    for c in configs:
        fam = c["model.name"]
        seen.add(fam)
        knobs = {k.removeprefix("model."): v for k, v in c.items()
                 if k.startswith("model.") and k != "model.name"}
        assert set(knobs) <= set(model_knobs(fam)), (fam, knobs)
        cfg = trial_config(base, c)
        assert cfg.model.name == fam and cfg.model.knobs() == knobs
        assert 1e-3 <= cfg.optim.lr <= 1.0 and cfg.optim.optimizer in ("sgd", "adamw")
        if fam == "resnet9":
            assert set(knobs) == {"width_mult", "depth", "kernel_size", "separable"}
        if fam == "simple_cnn":
            assert knobs == {}
    assert seen == {"resnet9", "mobilenet_v2", "dwsep_cnn", "simple_cnn"}
    # dwsep_cnn's grid key is crossed: each dwsep_cnn draw yields kernel 3 and kernel 5
    dwsep = [c["model.kernel_size"] for c in configs if c["model.name"] == "dwsep_cnn"]
    assert dwsep.count(3) == dwsep.count(5) > 0
    # a few of them build (the knobs are real)
    for c in configs[:8]:
        cfg = trial_config(base, c)
        create_model(cfg.model.name, num_classes=10, **cfg.model.knobs())


def test_sampling_is_seeded(base):
    space = parse_space(ARCH_SPACE, base)
    assert space.variants(8, seed=3) == space.variants(8, seed=3)
    assert space.variants(8, seed=3) != space.variants(8, seed=4)


def test_grid_searcher_enumerates_choices_and_families(base):
    space = parse_space({"optim.lr": {"choice": [0.1, 0.2]}, "optim.weight_decay":
                         {"loguniform": [1e-5, 1e-3]},
                         "model.family": {"simple_cnn": {}, "resnet9":
                                          {"model.width_mult": {"choice": [0.5, 1.0]}}}}, base)
    configs = space.variants(1, seed=0, enumerate_choices=True)
    assert len(configs) == 2 * (1 + 2)
    assert {(c["optim.lr"], c["model.name"], c.get("model.width_mult")) for c in configs} == {
        (lr, fam, w) for lr in (0.1, 0.2) for fam, w in
        [("simple_cnn", None), ("resnet9", 0.5), ("resnet9", 1.0)]}


@pytest.mark.parametrize("space, key, words", [
    ({"optim.lrr": {"loguniform": [1e-3, 1]}}, "space.optim.lrr", "did you mean optim.lr"),
    ({"modle.name": {"choice": ["resnet9"]}}, "space.modle.name", "unknown key"),
    ({"width_mult": {"choice": [1.0]}}, "space.width_mult", "model.width_mult"),
    ({"optim": {"choice": [1]}}, "space.optim", "config section"),
    ({"optim.lr": {"loguniform": [0, 1]}}, "space.optim.lr", "0 < low < high"),
    ({"optim.lr": {"logunifrom": [1e-3, 1]}}, "space.optim.lr", "did you mean loguniform"),
    ({"optim.optimizer": {"choice": ["sgd", "lion"]}}, "space.optim.optimizer", "'lion'"),
    ({"data.image_size": {"choice": [32, 64]}}, "space.data.image_size", "prepared once"),
    ({"scaling.num_workers": {"choice": [1, 2]}}, "space.scaling.num_workers", "workers_per_trial"),
    ({"model.name": {"choice": ["resnet9", "mobilenet_v2"]}, "model.kernel_size": {"choice": [3]}},
     "space.model.kernel_size", "'mobilenet_v2'"),
    ({"model.family": {"mobilenet_v2": {"model.depth": {"randint": [1, 2]}}}},
     "space.model.family.mobilenet_v2.model.depth", "does not accept knob 'depth'"),
    ({"model.family": {"resnet_9": {}}}, "space.model.family", "unknown model 'resnet_9'"),
    ({"model.family": {"resnet9": {"model.widht_mult": {"choice": [1.0]}}}},
     "space.model.family.resnet9.model.widht_mult", "did you mean model.width_mult"),
])
def test_bad_space_is_a_named_config_error(base, space, key, words):
    message = _error(parse_space, space, base)
    assert f"{key}:" in message and words in message, message


def test_base_knob_must_fit_every_family(tmp_path):
    base = TrainConfig.from_dict({"data": {"train": str(tmp_path)},
                                  "model": {"name": "resnet9", "kernel_size": 5}})
    message = _error(parse_space, {"model.family": {"resnet9": {}, "mobilenet_v2": {}}}, base)
    assert "base.model.kernel_size" in message and "mobilenet_v2" in message


def test_optuna_rejects_grid_and_uses_define_by_run(base):
    message = _error(parse_space, {"optim.lr": {"grid": [0.1, 0.2]}}, base, searcher="optuna")
    assert "space.optim.lr" in message and "grid" in message
    optuna = pytest.importorskip("optuna")
    arch = {k: v for k, v in ARCH_SPACE.items() if k != "model"}
    arch["model.family"] = {f: b for f, b in ARCH_SPACE["model"]["family"].items()
                            if f != "dwsep_cnn"}
    space = parse_space(arch, base, searcher="optuna")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    define = space.optuna_define_by_run()
    for i in range(30):
        trial = study.ask()
        out = define(trial)
        sampled = canonical_config({"point": {k.split("/", 1)[1]: v for k, v in out.items()}})
        cfg = trial_config(base, sampled)  # valid: only the chosen family's knobs
        assert set(cfg.model.knobs()) <= set(model_knobs(cfg.model.name))
        study.tell(trial, cfg.optim.lr)


def test_trial_config_names_the_bad_key(base):
    message = _error(trial_config, base, {"model.name": "mobilenet_v2", "model.depth": 2},
                     source="trial x")
    assert "model.depth" in message and "mobilenet_v2" in message
    message = _error(trial_config, base, {"optim.lr": -1.0})
    assert "optim.lr" in message
    cfg = trial_config(base, {"point": {"optim.lr": 0.3}}, name="abc_00001", storage_path="/tmp/s")
    assert cfg.optim.lr == 0.3 and cfg.run.name == "abc_00001" and cfg.run.storage_path == "/tmp/s"


def test_concurrency_fits_the_cluster(base):
    plan = SweepPlan(base, {"optim.lr": {"grid": [0.1, 0.2, 0.3, 0.4, 0.5]}},
                     SweepSettings(workers_per_trial=1, num_samples=1), *_defaults())
    # a trial holds 1 worker CPU + 0.5 data CPU (its driver none), and 1 CPU stays free for reads
    assert fit_concurrency(plan, {"CPU": 2.0}) == 1
    assert fit_concurrency(plan, {"CPU": 4.0}) == 2
    assert fit_concurrency(plan, {"CPU": 16.0}) == 5  # never more than the trials
    assert fit_concurrency(plan, {"CPU": float("inf")}) == 5  # an unbounded autoscaling group
    assert "cluster has" in _error(fit_concurrency, plan, {"CPU": 1.5})
    plan.settings.max_concurrent_trials = 3
    assert "sweep.max_concurrent_trials=3" in _error(fit_concurrency, plan, {"CPU": 4.0})
    # data.cache=memory: trials run no Ray Data tasks, so neither the Data share nor the free
    # CPU for reads is needed
    mem = SweepPlan(base.model_copy(update={"data": base.data.model_copy(update={"cache": "memory"})}),
                    {"optim.lr": {"grid": [0.1, 0.2, 0.3, 0.4, 0.5]}},
                    SweepSettings(workers_per_trial=1, num_samples=1), *_defaults())
    assert mem.trial_resources()["CPU"] == 1.0
    assert fit_concurrency(mem, {"CPU": 2.0}) == 2 and fit_concurrency(mem, {"CPU": 1.0}) == 1


def test_trial_bundle_reserves_the_worker_for_in_trial_training(base):
    """A one-worker memory-cache trial trains in its own process, so that process holds the
    worker's CPUs (and GPU); a streamed or multi-worker trial's process only waits on its
    TorchTrainer, which reserves its workers itself; ``sweep.in_trial=false`` forces that."""
    from cnn_ray.tune.trial import trial_bundle

    def cpus(plan, sampled):
        return trial_bundle(plan, sampled).bundles[0].get("CPU", 0.0)

    mem_base = base.model_copy(update={"data": base.data.model_copy(update={"cache": "memory"}),
                                       "scaling": base.scaling.model_copy(
                                           update={"cpus_per_worker": 1.5})})
    space = {"optim.lr": {"grid": [0.1, 0.2]}}
    mem = SweepPlan(mem_base, space, SweepSettings(num_samples=1), *_defaults())
    assert cpus(mem, {"point": {"optim.lr": 0.1}}) == 1.5 and cpus(mem, {}) == 1.5
    # a sampled value that sends the trial back to a TorchTrainer changes its reservation
    assert cpus(mem, {"point": {"scaling.num_workers": 2}}) == 0.0
    off = SweepPlan(mem_base, space, SweepSettings(num_samples=1, in_trial=False), *_defaults())
    assert cpus(off, {}) == 0.0
    stream = SweepPlan(base, space, SweepSettings(num_samples=1, trial_driver_cpus=0.25),
                       *_defaults())
    assert cpus(stream, {}) == 0.25


def test_max_t_and_base_epochs_must_agree(base):
    """Stopping by epoch with a max_t below the base's optim.epochs would cut every trial off
    before its learning-rate schedule ends: a named error; left out, max_t is derived."""
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings

    space = {"optim.lr": {"grid": [0.1, 0.2]}}
    epochs = base.optim.epochs
    with pytest.raises(ConfigError, match=r"scheduler.max_t \(%d\).*optim.epochs \(%d\)"
                       % (epochs - 1, epochs)):
        SweepPlan(base, space, SweepSettings(num_samples=1),
                  SchedulerSettings(kind="asha", max_t=epochs - 1), SearcherSettings())
    derived = SweepPlan(base, space, SweepSettings(num_samples=1), SchedulerSettings(kind="asha"),
                        SearcherSettings())
    assert derived.scheduler.max_t == epochs
    # FIFO never stops a trial; a space over optim.epochs gives each trial its own schedule
    SweepPlan(base, space, SweepSettings(num_samples=1),
              SchedulerSettings(kind="fifo", max_t=epochs + 5), SearcherSettings())
    SweepPlan(base, {"optim.epochs": {"choice": [epochs, epochs + 2]}},
              SweepSettings(num_samples=1), SchedulerSettings(kind="asha", max_t=epochs + 2),
              SearcherSettings())


def _defaults():
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings

    return SchedulerSettings(), SearcherSettings()


# ----------------------------------------------------------------------------- sweep files
def _sweep_file(tmp_path, **extra) -> Path:
    recipe = tmp_path / "recipes" / "small.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump({"data": {"train": str(tmp_path)},
                                      "model": {"name": "simple_cnn"}, "optim": {"epochs": 3}}))
    raw = {"base": "recipes/small.yaml",
           "space": {"optim.lr": {"loguniform": [1e-3, 1.0]},
                     "model": {"family": {"simple_cnn": {}, "resnet9":
                                          {"model.width_mult": {"choice": [0.5]}}}}},
           "sweep": {"num_samples": 2}, "scheduler": {"kind": "asha"}}
    raw.update(extra)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sweep_file_base_path_and_overrides(tmp_path):
    path = _sweep_file(tmp_path)
    spec = load_sweep_file(path, ["base.run.storage_path=/x", "sweep.num_samples=4",
                                  "scheduler.kind=fifo", "space.optim.lr.loguniform=[0.01, 0.1]",
                                  "space.model.family.resnet9.model.depth={randint: [1, 2]}"])
    assert spec.base.model.name == "simple_cnn" and spec.base.optim.epochs == 3
    assert spec.base.run.storage_path == "/x" and spec.sweep.num_samples == 4
    assert spec.scheduler.kind == "fifo"
    assert spec.space["optim.lr"] == {"loguniform": [0.01, 0.1]}
    space = parse_space(spec.space, spec.base)
    branch = {p.key: p for p in space.families["resnet9"]}
    assert branch["model.depth"].kind == "randint" and branch["model.width_mult"].args == (0.5,)


@pytest.mark.parametrize("overrides, key", [
    (["sweep.num_sample=4"], "sweep.num_sample"),
    (["base.optim.lrr=0.1"], "base.optim.lrr"),
    (["scheduler.kind=bohb"], "scheduler.kind"),
    (["sweep.metric=val_acc"], "sweep.metric"),
    (["searcher.seed=-1"], "searcher.seed"),
    (["sweeps.name=x"], "sweeps"),
])
def test_sweep_file_typos_are_named(tmp_path, overrides, key):
    message = _error(load_sweep_file, _sweep_file(tmp_path), overrides)
    assert f"{key}:" in message, message


def test_missing_recipe_is_named(tmp_path):
    path = _sweep_file(tmp_path, base="nope.yaml")
    assert "base: recipe not found: nope.yaml" in _error(load_sweep_file, path)


def test_override_descends_into_dotted_keys():
    raw = {"space": {"optim.lr": {"loguniform": [1, 2]}}}
    out = apply_overrides(raw, ["space.optim.lr.loguniform=[3, 4]",
                                "space.optim.momentum={uniform: [0.8, 0.9]}"])
    assert out["space"]["optim.lr"] == {"loguniform": [3, 4]}
    assert out["space"]["optim"]["momentum"] == {"uniform": [0.8, 0.9]}
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"sweep": {"name": "x"}}, ["sweep.name.y=1"])


def test_cli_tune_reports_space_errors_before_ray(tmp_path, capsys):
    path = _sweep_file(tmp_path, space={"optim.lrr": {"loguniform": [1e-3, 1.0]}})
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "space.optim.lrr" in err and "did you mean optim.lr" in err


@pytest.mark.parametrize("name", ["sweep_cifar10.yaml", "sweep_smoke.yaml"])
def test_shipped_sweep_files_are_valid(name, tmp_path):
    spec = load_sweep_file(REPO / "jobs" / "configs" / name,
                           [f"base.run.storage_path={tmp_path}"], check_paths=False)
    plan = SweepPlan(spec.base, spec.space, spec.sweep, spec.scheduler, spec.searcher)
    assert len(plan.points) == spec.sweep.num_samples
    configs = [trial_config(spec.base, {"point": p}) for p in plan.points]  # all valid
    assert all(c.model.name in list_models() for c in configs)
    if name == "sweep_cifar10.yaml":  # it searches the fast recipe's switches (seeded draw)
        assert spec.base.model.whitening.enabled and spec.base.optim.decoupled
        assert spec.base.optim.optimizer == "muon"  # the space's muon_lr acts on the recipe
        assert all(0.06 <= p["optim.muon_lr"] <= 0.24 for p in plan.points)
        for key in ("optim.ema.enabled", "model.whitening.enabled", "eval.tta",
                    "augment.hflip.mode", "optim.decay_norm_and_bias"):
            assert len({p[key] for p in plan.points}) == 2, key
    assert plan.exp_dir == f"{tmp_path}/{spec.sweep.name}"
    # a trial's LR schedule spans base optim.epochs: ASHA must let the best reach its end
    assert plan.scheduler.max_t == spec.base.optim.epochs


def test_asha_rungs_survive_a_restore(tmp_path):
    """Tune restores the searcher but not the scheduler: ResumableASHA keeps its rung records."""
    import pickle

    from cnn_ray.tune.schedulers import ResumableASHA

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    asha = ResumableASHA(time_attr="epoch", metric="val_loss", mode="min", max_t=3,
                         grace_period=1, reduction_factor=2, state_path=str(tmp_path / "rungs.json"))
    pickled = pickle.dumps(asha)  # what Tuner saves before the sweep runs
    for trial_id, loss in [("a", 2.0), ("b", 1.0)]:
        asha.on_trial_add(None, Trial(trial_id))
        assert asha.on_trial_result(None, Trial(trial_id), {"epoch": 1, "val_loss": loss}) == "CONTINUE"
    restored = pickle.loads(pickled)  # Tuner.restore: the empty scheduler comes back
    restored.on_trial_add(None, Trial("c"))
    # worse than the median of a and b: stopped (a fresh ASHA would let the first one continue)
    assert restored.on_trial_result(None, Trial("c"), {"epoch": 1, "val_loss": 3.0}) == "STOP"


def test_trains_in_trial_needs_one_worker_the_memory_cache_and_a_local_path(base):
    from cnn_ray.train.launch import trains_in_trial

    def with_(**kw):
        raw = base.to_dict()
        for key, value in kw.items():
            section, name = key.split("__")
            raw[section][name] = value
        return TrainConfig.from_dict(raw, check_paths=False)

    assert trains_in_trial(with_(data__cache="memory"))
    assert not trains_in_trial(with_(data__cache="none"))           # streams Ray Data
    assert not trains_in_trial(with_(data__cache="memory", scaling__num_workers=2))  # DDP
    assert not trains_in_trial(with_(data__cache="memory", run__storage_path="s3://b/runs",
                                     data__prepared_dir="/tmp/prepared"))


def test_in_trial_checkpoints_are_whole_run_dir_folders_newest_kept(tmp_path, monkeypatch):
    """TuneTrialSession writes each checkpoint into the run dir before it reports (with its
    path), keeps the newest ``keep``, and resumes from the newest complete one; a half-written
    temporary folder is never taken for a checkpoint."""
    import ray.tune

    from cnn_ray.train.worker import TuneTrialSession, latest_run_checkpoint

    reported = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reported.append(metrics))
    session = TuneTrialSession(str(tmp_path / "run"), keep=2)
    assert session.get_checkpoint() is None
    for epoch in (1, 2, 3):
        src = tmp_path / f"ckpt{epoch}"
        src.mkdir()
        (src / "meta.json").write_text(str(epoch))
        session.report({"epoch": epoch}, str(src))
    session.report({"epoch": 4}, None)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    assert [m.get("checkpoint_path") for m in reported] == [
        str(tmp_path / "run" / f"checkpoint_epoch_{e:06d}") for e in (1, 2, 3)] + [None]
    (tmp_path / "run" / "checkpoint_epoch_000009.tmp-1-abc").mkdir()  # a killed write
    assert latest_run_checkpoint(tmp_path / "run").name == "checkpoint_epoch_000003"
    with session.get_checkpoint().as_directory() as d:
        assert (Path(d) / "meta.json").read_text() == "3"
