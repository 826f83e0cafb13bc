"""One home for the small file idioms of cnn_ray: atomic writes, JSON lines, storage URIs.

Every writer and reader of run files, prepared-data metadata, sweep state and caches goes
through these helpers (STYLE.md rule 13: one helper per idiom).

Local paths are written atomically (a temporary file or folder in the same folder, then
``os.replace``), so a reader never sees a half-written file and a crash leaves the old one
intact. Storage URIs (``s3://``, ``gs://``, ``file://`` ...) go through
``pyarrow.fs.FileSystem.from_uri``, what Ray Train's own storage uses: object stores have no
append and an object is replaced whole by one upload, so a JSON-lines file there is read,
extended and written back in one piece (the files stay small: one line per epoch or per worker
start). Only one process should extend a given file on a URI at a time.

No Ray here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def is_uri(path: PathLike) -> bool:
    """Whether ``path`` is a storage URI (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def _fs(directory: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(directory))


# ------------------------------------------------------------------------------ local files
def _temp_name(dest: Path, tag: str) -> Path:
    """``<dest>.<tag>-<pid>-<random>`` next to ``dest``: unique, and the pid lets
    :func:`remove_stale_temps` tell a dead writer's leftovers from a running one's."""
    return dest.parent / f"{dest.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` when the block succeeds.

    For writers that want a file name rather than bytes (``pyarrow.parquet.ParquetWriter``,
    ``torch.save``). The temporary file (``.<name>.tmp-<pid>-<random>``, created empty with the
    usual umask permissions) is removed on an exception and ``path`` is left untouched. Parent
    folders are created. Raises ``OSError`` when the folder cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path.with_name("." + path.name), "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to the local file ``path`` atomically (:func:`atomic_path`).

    Parent folders are created. Returns ``path`` as a :class:`Path`.
    Raises ``OSError`` when the folder cannot be written.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None,
                      default: Optional[Callable[[Any], Any]] = None) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj, indent=indent, default=default)`` (a final
    newline when indented)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default)
                             + ("\n" if indent else ""))


def replace_directory(src: PathLike, dest: PathLike) -> Path:
    """Rename the folder ``src`` to ``dest`` (same file system), replacing an existing ``dest``.

    An existing ``dest`` is first renamed aside (``<dest>.old-<pid>-<random>``) and removed
    after ``src`` took its place, so ``dest`` is missing only between two renames and an
    interrupted replace leaves either folder whole. Returns ``dest`` as a :class:`Path`.
    """
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = _temp_name(dest, "old")
        os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


@contextlib.contextmanager
def atomic_directory(dest: PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it to ``dest`` when the block succeeds.

    Yields the temporary folder ``<dest>.tmp-<pid>-<random>`` (same parent, so the rename is
    atomic on one file system; created with the usual umask permissions). On an exception it is
    removed and ``dest`` is untouched; a killed process leaves it behind (see
    :func:`remove_stale_temps`). With ``replace`` an existing ``dest`` is replaced by
    :func:`replace_directory` (the old content stays readable until then); otherwise an existing
    ``dest`` raises ``FileExistsError`` at the end of the block.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(dest, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists() and not replace:
            raise FileExistsError(f"{dest} already exists")
        replace_directory(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(dest: PathLike) -> list[str]:
    """Delete the ``<dest>.tmp-<pid>...`` / ``<dest>.old-<pid>...`` siblings (from
    :func:`atomic_directory` / :func:`replace_directory`) left by processes that no longer run.

    The current process's own and those of live processes are kept. Returns the removed names.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    removed = []
    for entry in dest.parent.iterdir():
        for tag in (".tmp-", ".old-"):
            if not entry.name.startswith(dest.name + tag):
                continue
            pid = entry.name[len(dest.name) + len(tag):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_jsonl(text: str) -> list[dict]:
    """The records of JSON-lines ``text``, skipping blank lines and lines that are not valid
    JSON (e.g. the tail of a writer killed mid-line)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def iter_jsonl(path: PathLike) -> Iterator[dict]:
    """The records of a local JSON-lines file (:func:`parse_jsonl`); nothing if it is missing."""
    p = Path(path)
    if p.exists():
        yield from parse_jsonl(p.read_text())


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
    return parse_jsonl(read_text(directory, name) or "")
