"""Local data helpers: unpack the CIFAR-10 JPEG archive, take seeded ImageFolder subsets of it
and of the Oxford Flowers-102 archive, decode image folders into arrays.

No downloads: the archives (``cifar10-jpg.tar.gz``, the CIFAR-10 data set of Krizhevsky, 2009,
re-encoded as JPEG in the ImageFolder layout ``cifar10/{train,test}/<class>/NNNN.jpg``;
``oxford_flowers102.tar.gz``, Nilsback & Zisserman 2008, ``oxford_flowers102/{train,val}/<class>/
image_NNNNN.jpg`` at 160 px on the short side) must be on disk already.
"""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

from cnn_ray.io import replace_directory

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def default_archive() -> Path:
    """``$CNN_RAY_CIFAR_TAR``, else ``<repo>/../shared/data/cifar10-jpg.tar.gz``."""
    env = os.environ.get("CNN_RAY_CIFAR_TAR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def default_flowers_archive() -> Path:
    """``$CNN_RAY_FLOWERS_TAR``, else ``<repo>/../shared/data/oxford_flowers102.tar.gz``."""
    env = os.environ.get("CNN_RAY_FLOWERS_TAR")
    if env:
        return Path(env)
    return default_archive().with_name("oxford_flowers102.tar.gz")


def default_cache_dir() -> Path:
    """``$CNN_RAY_CACHE``, else ``~/.cache/cnn_ray``."""
    return Path(os.environ.get("CNN_RAY_CACHE", Path.home() / ".cache" / "cnn_ray"))


def extract_cifar10(archive: str | os.PathLike | None = None, dest: str | os.PathLike | None = None) -> Path:
    """Unpack the CIFAR-10 JPEG archive once and return the ``cifar10`` root.

    The root holds ``train/<class>/*.jpg`` (50,000 images) and ``test/<class>/*.jpg`` (10,000).
    Extraction goes to a temporary sibling and is renamed into place, so an interrupted
    extraction is never mistaken for a complete one.

    Raises:
        FileNotFoundError: the archive does not exist.
    """
    archive = Path(archive) if archive else default_archive()
    dest = Path(dest) if dest else default_cache_dir()
    root = dest / "cifar10"
    if (root / ".complete").exists():
        return root
    if not archive.exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive} (set CNN_RAY_CIFAR_TAR)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cifar10.tmp.", dir=dest) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        inner = Path(tmp) / "cifar10"
        if not inner.is_dir():
            raise FileNotFoundError(f"{archive}: expected a top-level 'cifar10/' folder")
        (inner / ".complete").touch()
        replace_directory(inner, root)
    return root


def make_subset(
    src: str | os.PathLike, dst: str | os.PathLike, per_class: int, *, seed: int = 0,
    classes: tuple[str, ...] | None = None,
) -> Path:
    """Copy a seeded random ``per_class`` images of each class folder of ``src`` into ``dst``.

    ``src`` is an ImageFolder root (``<class>/<file>``). The same ``seed`` gives the same files.
    Returns ``dst``. Raises ``ValueError`` if a class has fewer than ``per_class`` images.
    """
    src, dst = Path(src), Path(dst)
    rng = random.Random(seed)
    names = classes or tuple(sorted(p.name for p in src.iterdir() if p.is_dir()))
    for name in names:
        files = sorted(p.name for p in (src / name).iterdir() if p.is_file())
        if len(files) < per_class:
            raise ValueError(f"{src / name}: has {len(files)} images, asked for {per_class}")
        (dst / name).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, per_class):
            shutil.copyfile(src / name / f, dst / name / f)
    return dst


def cifar10_subset(split: str, per_class: int, *, seed: int = 0) -> Path:
    """A seeded ImageFolder subset of the real CIFAR-10 JPEGs, made once and then reused.

    ``split``: ``train`` or ``test``. Lives at ``<cache>/subsets/cifar10-<split>-<n>pc-seed<s>``;
    a ``.complete`` marker is written last, so an interrupted copy is redone, not reused.
    """
    dst = default_cache_dir() / "subsets" / f"cifar10-{split}-{per_class}pc-seed{seed}"
    if not (dst / ".complete").exists():
        make_subset(extract_cifar10() / split, dst, per_class, seed=seed)
        (dst / ".complete").touch()
    return dst


def flowers102_subset(split: str, per_class: int, *, classes: int | None = None, seed: int = 0,
                      archive: str | os.PathLike | None = None) -> Path:
    """A seeded ImageFolder subset of the real Oxford Flowers-102 photos, read straight from the
    archive (nothing else is extracted) once and then reused.

    ``split``: ``train`` or ``val``; ``classes``: the first ``classes`` class folders in sorted
    order (None: all 102); ``per_class`` files drawn from each with ``random.Random(seed)``
    (a class with fewer keeps all). Lives at ``<cache>/subsets/flowers102-<split>-<n>pc-
    <k>cls-seed<s>``, written to a temporary sibling and renamed into place with a
    ``.complete`` marker, so an interrupted copy is redone, not reused.

    Raises:
        ValueError: ``split`` is not ``train`` or ``val``. FileNotFoundError: no archive (set
            ``CNN_RAY_FLOWERS_TAR``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    tag = "all" if classes is None else str(classes)
    dst = default_cache_dir() / "subsets" / f"flowers102-{split}-{per_class}pc-{tag}cls-seed{seed}"
    if (dst / ".complete").exists():
        return dst
    archive = Path(archive) if archive else default_flowers_archive()
    if not archive.exists():
        raise FileNotFoundError(f"Oxford Flowers-102 archive not found: {archive} "
                                "(set CNN_RAY_FLOWERS_TAR)")
    prefix = f"oxford_flowers102/{split}/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)]
        by_class: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            by_class.setdefault(m.name[len(prefix):].split("/")[0], []).append(m)
        names = sorted(by_class)[:classes]
        rng = random.Random(seed)
        chosen = []
        for name in names:
            files = sorted(by_class[name], key=lambda m: m.name)
            chosen += rng.sample(files, min(per_class, len(files)))
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}.tmp.", dir=dst.parent) as tmp:
            inner = Path(tmp) / "subset"
            for m in chosen:
                out = inner / m.name[len(prefix):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
            (inner / ".complete").touch()
            replace_directory(inner, dst)
    return dst


def image_folder_arrays(root: str | os.PathLike, size: int, *, processes: int | None = None):
    """Decode an ImageFolder tree (``<root>/<class>/<file>``) into stored squares, as the
    prepare step stores them with ``data.store_size`` (:func:`cnn_ray.data.decode.decode_image`:
    the centre square resized to ``size``), for Ray-free runs (``benchmarks/ablate.py
    --recipe photo``).

    Returns:
        ``(x, y, class_names)``: ``(N, size, size, 3) uint8`` images in sorted (class, file)
        order, ``(N,) int64`` labels indexing the sorted class names.
    Raises:
        FileNotFoundError: ``root`` is not a folder. BadInputError: an undecodable file (named).
    """
    import functools
    import multiprocessing

    import numpy as np

    base = Path(os.path.expanduser(str(root)))
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {base}")
    names = sorted(p.name for p in base.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        for f in sorted(p for p in (base / name).iterdir() if p.is_file()):
            files.append(str(f))
            labels.append(label)
    decode = functools.partial(_decode_square, size=size)
    with multiprocessing.get_context("spawn").Pool(processes or os.cpu_count()) as pool:
        x = np.stack(pool.map(decode, files, chunksize=64))
    return x, np.asarray(labels, dtype=np.int64), names


def _decode_square(path: str, size: int):
    from cnn_ray.data.decode import decode_image

    return decode_image(Path(path).read_bytes(), size=size, path=path)


def _decode_rgb(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def cifar10_arrays(split: str, *, root: str | os.PathLike | None = None,
                   processes: int | None = None, cache: bool = True):
    """The CIFAR-10 JPEGs of ``split`` (``train`` / ``test``) decoded into arrays, for Ray-free
    runs (``benchmarks/gpu_check.py``, recipe probes) that need the whole set in memory.

    Decodes ``<root>/<split>/<class>/*.jpg`` with Pillow in a process pool (``processes``,
    default all CPUs) in sorted (class, file) order and caches the result as
    ``<cache>/decoded/cifar10-<split>-{x,y}.npy`` (written atomically) unless ``cache`` is off.

    Returns:
        ``(x, y)``: ``(N, 32, 32, 3) uint8`` NHWC images and ``(N,) int64`` labels (indices of
        :data:`CIFAR10_CLASSES`).
    Raises:
        ValueError: ``split`` is not ``train`` or ``test``. FileNotFoundError: no archive/root.
    """
    import multiprocessing

    import numpy as np

    from cnn_ray.io import atomic_write_bytes

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    store = default_cache_dir() / "decoded"
    xs, ys = store / f"cifar10-{split}-x.npy", store / f"cifar10-{split}-y.npy"
    if cache and xs.exists() and ys.exists():
        return np.load(xs), np.load(ys)
    base = Path(root) if root else extract_cifar10()
    files, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        for f in sorted((base / split / name).iterdir()):
            files.append(str(f))
            labels.append(label)
    with multiprocessing.get_context("spawn").Pool(processes or os.cpu_count()) as pool:
        x = np.stack(pool.map(_decode_rgb, files, chunksize=256))
    y = np.asarray(labels, dtype=np.int64)
    if cache:
        import io as _io

        for path, arr in ((xs, x), (ys, y)):
            buf = _io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(path, buf.getvalue())
    return x, y


def write_hyperspectral(images, labels, out: str | os.PathLike, *, bands: int = 32,
                        class_names: tuple[str, ...] = CIFAR10_CLASSES, seed: int = 0,
                        noise: float = 0.02) -> Path:
    """Expand RGB images into a hyperspectral-style tile set: ``bands`` uint16 bands per pixel,
    each a fixed random positive mix of R, G, B plus a per-band offset and Gaussian noise,
    written as ``<out>/<class>/<index>.npy`` (``(H, W, bands) uint16``) tiles.

    A stand-in for real multispectral tiles (seed 000) that ships offline: the bands are highly
    correlated, as neighbouring spectral bands are, so PCA keeps most of the signal in a few
    components.

    Args:
        images: ``(N, H, W, 3) uint8``. labels: ``(N,)`` class indices into ``class_names``.
        bands: bands per tile. seed: fixes the mixing matrix, offsets and noise.
        noise: noise standard deviation as a share of the full 16-bit range.

    Returns ``out``. Existing tiles of the same name are overwritten.
    """
    import numpy as np

    out = Path(out)
    rng = np.random.default_rng([seed, 32])
    mix = rng.dirichlet(np.ones(3), size=bands)                 # (bands, 3): rows sum to 1
    gain = rng.uniform(0.3, 0.9, size=bands) * 65535.0          # each band's own brightness
    offset = rng.uniform(0.0, 0.1, size=bands) * 65535.0
    for name in class_names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        x = (img.astype(np.float32) / 255.0) @ mix.T.astype(np.float32)   # (H, W, bands)
        x = x * gain + offset + rng.normal(0.0, noise * 65535.0, size=x.shape)
        np.save(out / class_names[int(y)] / f"{i:06d}.npy",
                np.clip(np.rint(x), 0, 65535).astype(np.uint16))
    return out
