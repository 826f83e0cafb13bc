"""``jobs/tune.py`` restores a sweep only with ``--resume`` (Tune's restore unpickles files)."""

from __future__ import annotations

from pathlib import Path

from cnn_ray.cli import main

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path, *extra):
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    return ["tune", "--config", str(REPO / "jobs" / "configs" / "sweep_smoke.yaml"),
            f"base.data.train={data.parent}", f"base.run.storage_path={tmp_path / 'runs'}",
            *extra]


def test_existing_sweep_name_without_resume_is_a_named_error(tmp_path, capsys):
    """A saved sweep (Tune's tuner.pkl) of the same name is never restored silently."""
    saved = tmp_path / "runs" / "smoke_sweep"
    saved.mkdir(parents=True)
    (saved / "tuner.pkl").write_bytes(b"not unpickled")
    assert main(_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "sweep.name" in err and "already exists" in err and "Traceback" not in err


def test_resume_of_a_missing_sweep_is_a_named_error(tmp_path, capsys):
    assert main(_args(tmp_path, "--resume")) == 2
    err = capsys.readouterr().err
    assert "--resume: no saved sweep" in err and "Traceback" not in err

