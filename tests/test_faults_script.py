"""jobs/faults.py: the generated bad-input suite is handled case by case (shared Ray session)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _faults_module():
    spec = importlib.util.spec_from_file_location("faults_job", REPO / "jobs" / "faults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_every_generated_bad_input_is_handled(ray_session):
    cases = _faults_module().bad_input_cases(argparse.Namespace(case_timeout=120.0))
    assert set(cases) >= {"truncated_jpeg", "zero_byte", "text_as_jpg", "cmyk_jpeg", "png_16bit",
                          "rgba_png", "grayscale", "image_6000x4000", "empty_class_folder",
                          "manifest_missing_file", "manifest_unknown_label",
                          "parquet_wrong_schema", "config_typo", "config_negative_lr"}
    not_handled = {k: v for k, v in cases.items() if not v["handled"]}
    assert not not_handled
    assert not any(v["hang"] for v in cases.values())
    assert cases["truncated_jpeg"]["fail"].startswith("BadInputError")
    assert all(v["run_files_intact"] for k, v in cases.items() if k.startswith("config_"))


@pytest.mark.slow
def test_kill_during_save_keeps_the_newest_complete_checkpoint(tmp_path):
    """Real SIGKILLs of a process writing checkpoints: nothing complete is lost or corrupted."""
    res = _faults_module().kill_during_save(tmp_path / "kills", kills=3)
    assert res["survived"] and res["checkpoints_lost"] == 0 and res["partial_looked_complete"] == 0
