"""The small text files of a run directory (config, class names, metrics, events), on a local
path or on any storage URI Ray Train accepts (``s3://``, ``gs://``, ``file://`` ...).

Local paths are written atomically (temporary file + ``os.replace``) and JSON lines are appended.
URIs go through ``pyarrow.fs.FileSystem.from_uri`` (what Ray Train's own storage uses): object
stores have no append and an object is replaced whole by one upload, so a JSON-lines file there
is read, extended and written back in one piece (the files stay small: one line per epoch or
per worker start). Only one process should extend a given file on a URI at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def is_uri(directory: str) -> bool:
    """Whether ``directory`` is a storage URI (``scheme://...``) rather than a local path."""
    return "://" in str(directory)


def _fs(directory: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(directory))


def write_text(directory: str, name: str, text: str) -> None:
    """Write ``<directory>/<name>`` whole (creating ``directory``); atomic on local paths,
    one upload on URIs."""
    if not is_uri(directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, d / name)
        return
    fs, root = _fs(directory)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(text.encode())


def read_text(directory: str, name: str) -> Optional[str]:
    """``<directory>/<name>``'s text, or None when it does not exist."""
    if not is_uri(directory):
        p = Path(directory) / name
        return p.read_text() if p.exists() else None
    import pyarrow.fs

    fs, root = _fs(directory)
    if fs.get_file_info(f"{root}/{name}").type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{name}") as f:
        return f.read().decode()


def append_jsonl(directory: str, name: str, record: dict) -> None:
    """Add ``record`` as one JSON line to ``<directory>/<name>`` (appended locally; read,
    extended and rewritten on a URI)."""
    line = json.dumps(record) + "\n"
    if not is_uri(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(Path(directory) / name, "a") as f:
            f.write(line)
        return
    old = read_text(directory, name) or ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(directory, name, old + line)
