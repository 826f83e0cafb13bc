"""cnn_ray.io: atomic files and folders, stale temporaries, JSON lines. No Ray."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cnn_ray.io import (atomic_directory, atomic_path, atomic_write_json, iter_jsonl, parse_jsonl,
                        read_jsonl, remove_stale_temps, replace_directory)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".f.bin.tmp-")
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o666 & ~umask  # like a plain open(), not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["f.bin"]


def test_atomic_write_json_default_and_newline(tmp_path):
    p = atomic_write_json(tmp_path / "a.json", {"p": tmp_path}, indent=2, default=str)
    assert p.read_text().endswith("}\n") and json.loads(p.read_text())["p"] == str(tmp_path)
    assert atomic_write_json(tmp_path / "b.json", [1]).read_text() == "[1]"


def test_atomic_directory_replace_keep_and_failure(tmp_path):
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        assert tmp.name.startswith(f"out.tmp-{os.getpid()}-") and not dest.exists()
        (tmp / "a").write_text("1")
    assert (dest / "a").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_directory(dest) as tmp:
            (tmp / "a").write_text("2")
            raise ValueError("build failed")
    assert (dest / "a").read_text() == "1"  # untouched
    with atomic_directory(dest) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(os.listdir(dest)) == ["b"]  # replaced whole
    with pytest.raises(FileExistsError):
        with atomic_directory(dest, replace=False) as tmp:
            (tmp / "c").write_text("4")
    assert sorted(os.listdir(dest)) == ["b"] and os.listdir(tmp_path) == ["out"]


def test_replace_directory_and_stale_temps(tmp_path):
    src, dest = tmp_path / "new", tmp_path / "data"
    src.mkdir()
    (src / "x").write_text("new")
    dest.mkdir()
    (dest / "x").write_text("old")
    replace_directory(src, dest)
    assert (dest / "x").read_text() == "new" and os.listdir(tmp_path) == ["data"]

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = [f"data.tmp-{dead}-ab12", f"data.old-{dead}-cd34", f"data.tmp-{dead}",  # dead writer
             f"data.tmp-{os.getpid()}-ef56", "data.tmp-notapid", "database.tmp-1-x"]
    for n in names:
        (tmp_path / n).mkdir()
    removed = remove_stale_temps(dest)
    assert sorted(removed) == sorted(names[:3])
    assert sorted(os.listdir(tmp_path)) == sorted(["data"] + names[3:])
    assert remove_stale_temps(tmp_path / "missing" / "x") == []


def test_jsonl_readers_skip_blank_and_broken_lines(tmp_path):
    text = '{"a": 1}\n\n{"a": 2}\n{"a": 3, "trunc'
    assert parse_jsonl(text) == [{"a": 1}, {"a": 2}]
    (tmp_path / "m.jsonl").write_text(text)
    assert read_jsonl(tmp_path / "m.jsonl") == list(iter_jsonl(tmp_path / "m.jsonl")) == parse_jsonl(text)
    assert read_jsonl(tmp_path / "missing.jsonl") == []
