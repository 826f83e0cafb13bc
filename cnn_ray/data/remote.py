"""Raw files at storage URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``) through pyarrow's
filesystems (:func:`pyarrow.fs.FileSystem.from_uri`: S3, GCS, HDFS and local are built in;
credentials come from the environment as for Ray Train's own storage). No Ray here.

Used by :mod:`cnn_ray.data.sources` to list an ImageFolder tree or read a manifest at a URI, and
by the decoding tasks (:func:`cnn_ray.data.decode_tasks.decode_block`) to read each file's bytes on
whichever node decodes it, so raw data in a bucket needs no shared mount.
"""

from __future__ import annotations

import functools
import posixpath
from typing import Optional

__all__ = ["dirname", "join", "list_files", "open_input", "read_bytes", "stat"]


@functools.lru_cache(maxsize=16)
def _filesystem(key: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(key)[0]


_BUCKET_SCHEMES = ("s3", "gs", "gcs")  # pyarrow paths there are "bucket/key"


def _split(uri: str):
    """``(filesystem, path inside it, "scheme://" prefix)``. The filesystem is cached per
    scheme and bucket (``file``, ``s3``, ``gs``), so a decoding task does not reconnect for
    every file; other schemes are resolved per call."""
    import pyarrow.fs

    scheme, _, rest = uri.partition("://")
    prefix = scheme + "://"
    if scheme == "file":
        return _filesystem("file:///"), rest, prefix
    if scheme in _BUCKET_SCHEMES:
        return _filesystem(prefix + rest.split("/", 1)[0]), rest, prefix
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, path, prefix


def join(base: str, relative: str) -> str:
    """``base`` URI + a relative ``a/b.jpg`` (POSIX separators)."""
    return base.rstrip("/") + "/" + relative.lstrip("/")


def dirname(uri: str) -> str:
    """The URI of the folder holding ``uri``."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{posixpath.dirname(rest)}"


def stat(uri: str) -> Optional[tuple[int, int]]:
    """``(size, mtime_ns)`` of a file at ``uri``, or None when there is no such file."""
    import pyarrow.fs

    fs, path, _ = _split(uri)
    info = fs.get_file_info(path)
    if info.type != pyarrow.fs.FileType.File:
        return None
    return int(info.size or 0), int(info.mtime_ns or 0)


def list_files(root: str) -> list[tuple[str, int, int]]:
    """``(uri, size, mtime_ns)`` of every file under ``root`` (recursively; names starting with
    ``.`` at any level skipped), sorted by URI. ``[]`` when ``root`` holds nothing."""
    import pyarrow.fs

    fs, path, prefix = _split(root)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path.rstrip("/"), recursive=True,
                                                         allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    base = path.rstrip("/") + "/"
    out = []
    for info in infos:
        rel = info.path[len(base):] if info.path.startswith(base) else info.path
        if info.type != pyarrow.fs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
            continue
        out.append((prefix + info.path, int(info.size or 0), int(info.mtime_ns or 0)))
    out.sort()
    return out


def open_input(uri: str):
    """A readable pyarrow file of ``uri`` (for CSV/JSON/Parquet readers). Raises
    ``FileNotFoundError`` when it does not exist."""
    fs, path, _ = _split(uri)
    return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    """The bytes of the file at ``uri``. Raises ``FileNotFoundError`` when it does not exist,
    ``OSError`` when it cannot be read."""
    fs, path, _ = _split(uri)
    with fs.open_input_stream(path) as f:
        return f.read()
