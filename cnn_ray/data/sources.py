"""Find out what a data path holds: an ImageFolder tree, a manifest, or Parquet shards. No Ray here.

:func:`discover` lists the input once (cheap: names and ``stat`` only, no pixels) and returns a
:class:`Source`: its kind, class names, the records or files to read, a digest of the listing
(paths, sizes, mtimes) for caching, and the problems found (bad records). :func:`split_holdout`
makes the seeded stratified train/val split.

Layouts:

* ``folder`` — ``<root>/<class>/**/<image>``. Class names are the sorted sub-folder names and a
  label is the index of its class. Image files are matched by extension (jpg jpeg png bmp gif
  tif tiff webp, and npy npz array tiles: :mod:`cnn_ray.data.bands`; any case); other files and hidden names (``.*``) are ignored. An **empty class
  folder is kept** (so label indices stay the same across train/val and runs) and reported: a
  warning is logged and an entry with ``row=None`` is added to ``Source.problems``.
* ``manifest`` — a ``.csv``, ``.tsv``, JSON lines (``.jsonl``/``.ndjson``) or ``.parquet``
  table with a path column and a label column (:class:`ManifestSpec`: ``data.path_column``,
  default ``path``; ``data.label_column``, default ``label``; or ``data.path_template`` such as
  ``images/{id}.jpg``, which builds the path from id columns). Relative paths are relative to
  the manifest's folder. Labels are class names (strings) or indices (integers).
  Class names come from the ``class_names`` argument, else the sorted unique string labels
  (integer labels without names get ``"0".."K-1"``). A row with a missing file, an empty path,
  or an unknown label is a bad record (``Source.problems``: row, path, reason, kind), not an
  error. ``kind`` is ``missing`` (no such file) or ``bad_record`` (empty path/label, unknown
  label); decoding adds ``undecodable`` (:mod:`cnn_ray.data.prepare_build`).
* ``parquet`` — a directory or glob of ``.parquet`` files with an ``image`` column and an integer
  ``label`` column. ``image`` holds encoded bytes (``binary``) or raw pixels
  (``fixed_size_binary`` of uint8, ``fixed_size_list`` / ``list`` of uint8, uint16 or float32;
  non-uint8 pixels go through the band transform of :mod:`cnn_ray.data.bands`) whose HWC shape comes from
  the file metadata key ``cnn_ray`` (JSON ``{"image_shape": [H, W, C]}``), else a ``shape``
  column, else a square with the configured channel count. Optional ``class_names`` in the
  same metadata. Prepared shards (:mod:`cnn_ray.data.shards`) are valid input.
* ``auto`` — a ``.csv``/``.tsv``/``.jsonl`` file, or a ``.parquet`` file with the path
  column(s), is a manifest; a
  directory or glob holding ``.parquet`` files is ``parquet``; a directory whose sub-folders hold
  images is ``folder``.

Paths are local (or locally mounted) or storage URIs (``s3://``, ``gs://``, ``file://``...;
folder and manifest layouts: :mod:`cnn_ray.data.remote`, pyarrow filesystems; relative manifest
paths resolve against the manifest's URI; Parquet inputs must be local). The listing primitives (image and Parquet
file walks, the listing digest, Parquet image-column types) live in :mod:`cnn_ray.data.listing`.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.data import remote
from cnn_ray.data.errors import SourceError
from cnn_ray.data.listing import (
    array_dtype,
    array_storage,
    digest,
    has_image,
    image_encoding,
    is_glob,
    is_image,
    list_images,
    parquet_files,
)
from cnn_ray.data.shards import read_metadata
from cnn_ray.io import is_uri

log = logging.getLogger(__name__)

Kind = Literal["folder", "manifest", "parquet"]


class Record(NamedTuple):
    """One image to read: its file, label index, and row id (position in the input listing)."""

    path: str
    label: int
    row: int


@dataclass
class Source:
    """What a data path holds (see the module docstring for the layouts).

    ``records`` (folder/manifest) and ``files`` (parquet) list the inputs in a fixed order;
    ``row`` ids are unique and stable within the source: for folder/manifest the record's
    position in the listing (manifest: the 0-based data row), for parquet the row's position
    across ``files`` in order. ``problems`` are bad records ``{"path", "reason", "row"}`` found
    while listing (``row=None`` for a whole-folder note such as an empty class).
    """

    kind: Kind
    path: str
    class_names: list[str]
    records: list[Record] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    file_rows: list[int] = field(default_factory=list)
    image_encoding: Literal["file", "bytes", "array"] = "file"
    image_shape: Optional[tuple[int, int, int]] = None  # raw-array parquet only: (H, W, C)
    array_dtype: str = "uint8"  # raw-array parquet only: the pixels' numpy dtype
    problems: list[dict[str, Any]] = field(default_factory=list)
    listing_digest: str = ""

    @property
    def num_rows(self) -> int:
        """Rows in the input, bad records included (parquet: all rows of all files)."""
        if self.kind == "parquet":
            return int(sum(self.file_rows))
        return len(self.records) + sum(1 for p in self.problems if p.get("row") is not None)

    def labels(self) -> np.ndarray:
        """``(num_rows,)`` ``int64`` label per row id; ``-1`` where a folder/manifest row is bad.

        For parquet this reads the ``label`` column of every file (cheap: one column).
        """
        if self.kind == "parquet":
            parts = [pq.read_table(f, columns=["label"])["label"].to_numpy(zero_copy_only=False)
                     for f in self.files]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        out = np.full(self.num_rows, -1, dtype=np.int64)
        for r in self.records:
            out[r.row] = r.label
        return out


# ------------------------------------------------------------------------------- discover
def discover(
    path: str,
    format: Literal["auto", "folder", "parquet", "manifest"] = "auto",
    *,
    class_names: Optional[Sequence[str]] = None,
    channels: int = 3,
    manifest: Optional["ManifestSpec"] = None,
) -> Source:
    """List the input at ``path`` and return a :class:`Source`.

    Args:
        path: ImageFolder root, manifest file, Parquet file/directory, or a glob of Parquet files.
        format: layout; ``auto`` detects it (see the module docstring).
        class_names: fix the label order (e.g. the training set's, when listing a val set);
            folder classes or manifest labels not in it become bad records.
        channels: for raw-array Parquet without a stored shape: infer a square of this depth.
        manifest: the manifest's columns (:class:`ManifestSpec`, e.g.
            ``ManifestSpec.of(cfg.data)``); default ``path`` and ``label``.

    Raises:
        SourceError: the path does not exist, its layout cannot be detected, or a Parquet
            file/manifest lacks the expected columns (the message names the file and column).
    """
    path = str(path) if is_uri(path) else os.path.expanduser(str(path))
    spec = manifest or ManifestSpec()
    kind = detect_format(path, spec) if format == "auto" else format
    names = list(class_names) if class_names is not None else None
    if kind == "folder":
        return _discover_folder(path, names)
    if kind == "manifest":
        return _discover_manifest(path, names, spec)
    if kind == "parquet":
        return _discover_parquet(path, names, channels)
    raise SourceError(f"unknown data format {format!r}: expected auto, folder, parquet or manifest")


def detect_format(path: str, manifest: Optional["ManifestSpec"] = None) -> Kind:
    """Guess the layout of ``path`` (rules in the module docstring; a ``.parquet`` file is a
    manifest when it has ``manifest``'s path columns). Raises :class:`SourceError`."""
    if is_uri(path):
        if path.lower().endswith((".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")):
            return "manifest"
        return "folder"
    if is_glob(path):
        if any(p.lower().endswith(".parquet") for p in glob.glob(path)):
            return "parquet"
        raise SourceError(f"{path}: glob matches no .parquet files")
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith((".csv", ".tsv", ".jsonl", ".ndjson")):
            return "manifest"
        if low.endswith(".parquet"):
            cols = (manifest or ManifestSpec()).path_columns()
            names = pq.read_schema(path).names
            return "manifest" if all(c in names for c in cols) else "parquet"
        raise SourceError(f"{path}: cannot detect the format of this file: expected a .csv, "
                          ".tsv, .jsonl or .parquet manifest, a .parquet shard, or an "
                          "ImageFolder directory")
    if os.path.isdir(path):
        entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
        if any(e.is_file() and e.name.lower().endswith(".parquet") for e in entries) or parquet_files(path):
            return "parquet"
        if any(e.is_dir() and has_image(e.path) for e in entries):
            return "folder"
        raise SourceError(f"{path}: cannot detect the format: no .parquet files and no class "
                          "sub-folders holding images (expected <root>/<class>/<image>)")
    raise SourceError(f"{path}: path does not exist")


# --------------------------------------------------------------------------------- folder
def _uri_classes(root: str) -> dict[str, list[tuple[str, int, int]]]:
    """An ImageFolder tree at a URI: class -> its image files (``(uri, size, mtime_ns)``)."""
    base = root.rstrip("/") + "/"
    by_class: dict[str, list[tuple[str, int, int]]] = {}
    for uri, size, mtime in remote.list_files(root):
        rel = uri[len(base):]
        if "/" in rel and is_image(rel.rsplit("/", 1)[-1]):
            by_class.setdefault(rel.split("/", 1)[0], []).append((uri, size, mtime))
    return by_class


def _discover_folder(root: str, class_names: Optional[list[str]]) -> Source:
    by_class = _uri_classes(root) if is_uri(root) else None
    if by_class is None and not os.path.isdir(root):
        raise SourceError(f"{root}: not a directory (format=folder expects <root>/<class>/<image>)")
    found = (sorted(by_class) if by_class is not None else
             sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))
    if not found:
        raise SourceError(f"{root}: no class sub-folders (format=folder expects <root>/<class>/<image>)")
    names = class_names if class_names is not None else found
    index = {n: i for i, n in enumerate(names)}
    src = Source(kind="folder", path=root, class_names=list(names))
    listing: list[tuple] = []
    row = 0
    for cls in found:
        files = by_class[cls] if by_class is not None else list_images(os.path.join(root, cls))
        if not files:
            reason = "empty class folder: no image files (class kept so label indices stay stable)"
            log.warning("%s: %s", os.path.join(root, cls), reason)
            src.problems.append({"path": os.path.join(root, cls), "reason": reason, "row": None})
        for f, size, mtime in files:
            listing.append((f, size, mtime))
            if cls in index:
                src.records.append(Record(f, index[cls], row))
            else:
                src.problems.append({"path": f, "row": row,
                                     "reason": f"class folder {cls!r} is not one of the known classes"})
            row += 1
    for missing in sorted(set(names) - set(found)):
        log.warning("%s: no folder for class %r", root, missing)
    src.listing_digest = digest(listing)
    return src


# ------------------------------------------------------------------------------- manifest
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


@dataclass(frozen=True)
class ManifestSpec:
    """Which manifest columns hold what (``data.path_column``, ``data.label_column``,
    ``data.path_template``).

    ``path_template`` (e.g. ``"images/{id}.jpg"``) builds each row's path from its columns
    (``{name}`` is the value of column ``name``; format specs such as ``{n:05d}`` work on
    numeric columns); without it the path is the value of ``path_column``.
    """

    path_column: str = "path"
    label_column: str = "label"
    path_template: Optional[str] = None

    @classmethod
    def of(cls, data: Any) -> "ManifestSpec":
        """The spec of a :class:`~cnn_ray.config.DataConfig` (or anything with those fields)."""
        return cls(getattr(data, "path_column", "path"), getattr(data, "label_column", "label"),
                   getattr(data, "path_template", None))

    def template_columns(self) -> list[str]:
        """The columns ``path_template`` names (``[]`` without a template).

        Raises:
            SourceError: the template is not a valid format string or names no column.
        """
        if self.path_template is None:
            return []
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.path_template) if f is not None]
        except ValueError as exc:
            raise SourceError(f"data.path_template {self.path_template!r}: {exc}") from None
        names = [f.split(".")[0].split("[")[0] for f in fields]
        if not names or any(not n or n.isdigit() for n in names):
            raise SourceError(f"data.path_template {self.path_template!r}: expected named "
                              "columns in braces, e.g. 'images/{id}.jpg'")
        return list(dict.fromkeys(names))

    def path_columns(self) -> list[str]:
        """The columns the paths are built from."""
        return self.template_columns() or [self.path_column]


def _read_table(path: str, string_columns: Sequence[str] = ()) -> pa.Table:
    """Read a CSV/TSV/JSON-lines/Parquet table; ``string_columns`` are read as text when CSV/TSV
    (so ids such as ``007`` keep their zeros). Raises :class:`SourceError` naming the file."""
    if not (remote.stat(path) is not None if is_uri(path) else os.path.isfile(path)):
        raise SourceError(f"{path}: manifest file does not exist")
    low = path.lower()
    src = remote.open_input(path) if is_uri(path) else path
    try:
        if low.endswith((".csv", ".tsv")):
            import pyarrow.csv as pacsv

            return pacsv.read_csv(
                src, parse_options=pacsv.ParseOptions(delimiter="\t" if low.endswith(".tsv") else ","),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in string_columns}))
        if low.endswith((".jsonl", ".ndjson")):
            import pyarrow.json as pajson

            return pajson.read_json(src)
        if low.endswith(".parquet"):
            return pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read manifest: {exc}") from None
    raise SourceError(f"{path}: unknown manifest type: expected one of {', '.join(MANIFEST_EXTENSIONS)}")


def _read_manifest(path: str, spec: ManifestSpec) -> pa.Table:
    table = _read_table(path, spec.path_columns())
    need = spec.path_columns() + [spec.label_column]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        what = (f"path_template {spec.path_template!r} names" if spec.path_template
                else f"data.path_column is {spec.path_column!r},")
        raise SourceError(f"{path}: manifest has no column {', '.join(map(repr, missing))} "
                          f"({what} data.label_column is {spec.label_column!r}); its columns are "
                          f"{table.column_names}: set data.path_column / data.label_column / "
                          "data.path_template to match")
    return table


def _manifest_paths(path: str, table: pa.Table, spec: ManifestSpec) -> list[Optional[str]]:
    """Each row's path as written (before resolving against the manifest's folder)."""
    if spec.path_template is None:
        col = table[spec.path_column]
        return [None if v is None else str(v) for v in col.to_pylist()]
    cols = {c: table[c].to_pylist() for c in spec.template_columns()}
    out: list[Optional[str]] = []
    for row in range(table.num_rows):
        values = {c: v[row] for c, v in cols.items()}
        if any(v is None or v == "" for v in values.values()):
            out.append(None)
            continue
        try:
            out.append(spec.path_template.format(**values))
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise SourceError(f"{path}: row {row}: data.path_template {spec.path_template!r} "
                              f"does not fit {values}: {exc}") from None
    return out


def manifest_columns(path: str) -> list[str]:
    """The column names of a CSV/TSV/JSON-lines/Parquet manifest. Raises :class:`SourceError`."""
    if path.lower().endswith(".parquet"):
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{path}: cannot read manifest: {exc}") from None
    return _read_table(path).column_names


def manifest_files(path: str, spec: ManifestSpec = ManifestSpec()) -> list[str]:
    """The non-empty paths of a manifest (``spec``'s path column or template), resolved against
    the manifest's folder; labels are not read. Raises :class:`SourceError` naming the file or
    the missing column."""
    table = _read_table(path, spec.path_columns())
    missing = [c for c in spec.path_columns() if c not in table.column_names]
    if missing:
        raise SourceError(f"{path}: manifest has no column {', '.join(map(repr, missing))}; its "
                          f"columns are {table.column_names}")
    base = os.path.dirname(os.path.abspath(path))
    return [p if os.path.isabs(p) else os.path.join(base, os.path.expanduser(p))
            for p in _manifest_paths(path, table, spec) if p]


def _discover_manifest(path: str, class_names: Optional[list[str]],
                       spec: ManifestSpec = ManifestSpec()) -> Source:
    table = _read_manifest(path, spec)
    base = remote.dirname(path) if is_uri(path) else os.path.dirname(os.path.abspath(path))
    paths = _manifest_paths(path, table, spec)
    label_col = table[spec.label_column]
    is_int = pa.types.is_integer(label_col.type)
    if not is_int and not pa.types.is_string(label_col.type) and not pa.types.is_large_string(label_col.type):
        raise SourceError(f"{path}: manifest column {spec.label_column!r} (data.label_column) must "
                          f"hold class names (string) or indices (integer), got {label_col.type}")
    labels = label_col.to_pylist()
    if class_names is None:
        if is_int:
            top = max((v for v in labels if v is not None), default=-1)
            class_names = [str(i) for i in range(top + 1)]
        else:
            class_names = sorted({v for v in labels if v is not None and v != ""})
    index = {n: i for i, n in enumerate(class_names)}
    src = Source(kind="manifest", path=path, class_names=list(class_names))
    listing: list[tuple] = [(path, *_stat(path))]
    for row, (p, lab) in enumerate(zip(paths, labels)):
        full = _resolve(base, p)
        reason, kind = None, "bad_record"
        if not p:
            reason = "empty path"
        elif lab is None or lab == "":
            reason = "empty label"
        elif is_int and not 0 <= lab < len(class_names):
            reason = f"label index {lab} out of range [0, {len(class_names)})"
        elif not is_int and lab not in index:
            reason = f"unknown label {lab!r} (known: {len(class_names)} classes)"
        if reason is None:
            try:
                listing.append((full, *_stat(full)))
            except OSError:
                reason, kind = "file not found", "missing"
        if reason is None:
            src.records.append(Record(full, int(lab) if is_int else index[lab], row))
        else:
            src.problems.append({"path": full or "", "reason": f"manifest row {row}: {reason}",
                                 "row": row, "kind": kind})
    src.listing_digest = digest(listing + [("bad", len(src.problems))])
    return src


def _resolve(base: str, p: Optional[str]) -> Optional[str]:
    """A manifest row's path: URIs and absolute paths as written, others under ``base`` (the
    manifest's folder, a local path or a URI)."""
    if p is None or is_uri(p) or os.path.isabs(p):
        return p
    return remote.join(base, p) if is_uri(base) else os.path.join(base, os.path.expanduser(p))


def _stat(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a local file or a URI. Raises ``OSError`` when missing."""
    if is_uri(path):
        st = remote.stat(path)
        if st is None:
            raise FileNotFoundError(path)
        return st
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


# -------------------------------------------------------------------------------- parquet
_EXPECTED = ("expected columns 'image' (encoded bytes as binary, or raw pixels as "
             "fixed_size_binary (uint8) / fixed_size_list or list of uint8, uint16 or float32) "
             "and 'label' (integer)")


def _infer_shape(f: str, schema: pa.Schema, channels: int) -> tuple[int, int, int]:
    meta = read_metadata(schema)
    if meta.get("image_shape"):
        return tuple(int(v) for v in meta["image_shape"])  # type: ignore[return-value]
    storage, ext_shape = array_storage(schema.field("image").type)
    if ext_shape and len(ext_shape) == 3:
        return ext_shape  # type: ignore[return-value]
    if "shape" in schema.names:
        first = pq.ParquetFile(f).read_row_group(0, columns=["shape"])["shape"][0].as_py()
        if first and len(first) in (2, 3):
            return (int(first[0]), int(first[1]), int(first[2]) if len(first) == 3 else 1)
    if pa.types.is_fixed_size_binary(storage):
        n = storage.byte_width
    elif pa.types.is_fixed_size_list(storage):
        n = storage.list_size
    else:
        col = pq.ParquetFile(f).read_row_group(0, columns=["image"])["image"]
        n = len(col[0].as_py()) if len(col) else 0
    side = int(round(math.sqrt(n / channels))) if n else 0
    if side <= 0 or side * side * channels != n:
        raise SourceError(f"{f}: cannot tell the image shape of {n}-byte arrays: store "
                          "image_shape [H, W, C] in the 'cnn_ray' JSON file metadata or add a "
                          f"'shape' column (a square of {channels} channels does not fit)")
    return (side, side, channels)


def _discover_parquet(path: str, class_names: Optional[list[str]], channels: int) -> Source:
    files = parquet_files(path)
    if not files:
        raise SourceError(f"{path}: no .parquet files found")
    encoding = shape = names_meta = dtype = None
    rows, listing = [], []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{f}: cannot read Parquet file: {exc}") from None
        schema = pf.schema_arrow
        enc = image_encoding(schema.field("image").type) if "image" in schema.names else None
        if enc is None or "label" not in schema.names or not pa.types.is_integer(schema.field("label").type):
            found = ", ".join(f"{n}: {schema.field(n).type}" for n in schema.names)
            raise SourceError(f"{f}: wrong schema: {_EXPECTED}; found {{{found}}}")
        if encoding is None:
            encoding = enc
            names_meta = read_metadata(schema).get("class_names")
            shape = _infer_shape(f, schema, channels) if enc == "array" else None
            dtype = array_dtype(schema.field("image").type) if enc == "array" else None
        elif enc != encoding or (enc == "array" and (
                _infer_shape(f, schema, channels) != shape
                or array_dtype(schema.field("image").type) != dtype)):
            raise SourceError(f"{f}: image column differs from {files[0]} ({enc} vs {encoding}"
                              f"{', shape' if enc == encoding else ''}); all files must match")
        rows.append(pf.metadata.num_rows)
        st = os.stat(f)
        listing.append((f, st.st_size, st.st_mtime_ns))
    src = Source(kind="parquet", path=path, class_names=[], files=files, file_rows=rows,
                 image_encoding=encoding, image_shape=shape, array_dtype=dtype or "uint8")
    if class_names is not None:
        src.class_names = list(class_names)
    elif names_meta:
        src.class_names = list(names_meta)
    else:
        top = int(src.labels().max(initial=-1))
        src.class_names = [str(i) for i in range(top + 1)]
    src.listing_digest = digest(listing)
    return src


# ------------------------------------------------------------------------------------ split
def split_holdout(
    n_or_labels: int | Sequence[int] | np.ndarray | Sequence[Record],
    val_fraction: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split, stratified by label.

    Args:
        n_or_labels: a row count (unstratified), a label per row, or a list of :class:`Record`.
            Labels ``< 0`` (bad rows) go to neither split.
        val_fraction: share of each class held out (rounded per class; each class with at
            least two rows keeps one or more in train).
        seed: the same seed and input give the same split.

    Returns:
        ``(train_idx, val_idx)``: sorted ``int64`` positions into ``n_or_labels``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(n_or_labels, (int, np.integer)):
        labels = np.zeros(int(n_or_labels), dtype=np.int64)
    elif len(n_or_labels) and isinstance(n_or_labels[0], Record):
        labels = np.array([r.label for r in n_or_labels], dtype=np.int64)
    else:
        labels = np.asarray(n_or_labels, dtype=np.int64)
    train, val = [], []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        # one stream per class: adding a class does not change the other classes' splits
        perm = np.random.default_rng([seed, int(cls)]).permutation(members)
        k = int(round(len(members) * val_fraction))
        k = min(k, len(members) - 1) if len(members) > 1 else k
        val.append(perm[:k])
        train.append(perm[k:])
    return _sorted_concat(train), _sorted_concat(val)


def _sorted_concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
