"""One home for the small file idioms of cnn_ray: atomic writes, JSON lines, storage URIs.

Every writer and reader of run files, prepared-data metadata, sweep state and caches goes
through these helpers (STYLE.md rule 13: one helper per idiom).

Local paths are written atomically (a temporary file in the same folder, then ``os.replace``),
so a reader never sees a half-written file and a crash leaves the old file intact. Storage URIs
(``s3://``, ``gs://``, ``file://`` ...) go through ``pyarrow.fs.FileSystem.from_uri``, what Ray
Train's own storage uses: object stores have no append and an object is replaced whole by one
upload, so a JSON-lines file there is read, extended and written back in one piece (the files
stay small: one line per epoch or per worker start). Only one process should extend a given
file on a URI at a time.

No Ray here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def is_uri(path: PathLike) -> bool:
    """Whether ``path`` is a storage URI (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def _fs(directory: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(directory))


# ------------------------------------------------------------------------------ local files
def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to the local file ``path`` atomically (temp file + ``os.replace``).

    Parent folders are created. Returns ``path`` as a :class:`Path`.
    Raises ``OSError`` when the folder cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj)``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent else ""))


@contextlib.contextmanager
def atomic_directory(dest: PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it to ``dest`` when the block succeeds.

    Yields the temporary folder (same parent, so the rename is atomic on one file system). On an
    exception the temporary folder is removed and ``dest`` is untouched. With ``replace`` an
    existing ``dest`` is removed just before the rename (the old content stays readable until
    then); otherwise an existing ``dest`` raises ``FileExistsError``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            if not replace:
                raise FileExistsError(f"{dest} already exists")
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def iter_jsonl(path: PathLike) -> Iterator[dict]:
    """The records of a local JSON-lines file, skipping blank lines; nothing if it is missing.

    A line that is not valid JSON (e.g. the tail of a writer killed mid-line) is skipped.
    """
    p = Path(path)
    if not p.exists():
        return
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_jsonl(path: PathLike) -> list[dict]:
    """:func:`iter_jsonl` as a list."""
    return list(iter_jsonl(path))


# ------------------------------------------------------------------------------ run dirs (local or URI)
def write_text(directory: PathLike, name: str, text: str) -> None:
    """Write ``<directory>/<name>`` whole (creating ``directory``); atomic on local paths,
    one upload on URIs."""
    directory = str(directory)
    if not is_uri(directory):
        atomic_write_text(Path(directory) / name, text)
        return
    fs, root = _fs(directory)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(text.encode())


def read_text(directory: PathLike, name: str) -> Optional[str]:
    """``<directory>/<name>``'s text, or None when it does not exist."""
    directory = str(directory)
    if not is_uri(directory):
        p = Path(directory) / name
        return p.read_text() if p.exists() else None
    import pyarrow.fs

    fs, root = _fs(directory)
    if fs.get_file_info(f"{root}/{name}").type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{name}") as f:
        return f.read().decode()


def append_jsonl(directory: PathLike, name: str, record: dict) -> None:
    """Add ``record`` as one JSON line to ``<directory>/<name>`` (appended locally; read,
    extended and rewritten on a URI)."""
    directory = str(directory)
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


def read_jsonl_at(directory: PathLike, name: str) -> list[dict]:
    """The records of ``<directory>/<name>`` (local path or URI); ``[]`` when missing."""
    text = read_text(directory, name)
    out = []
    for line in (text or "").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
