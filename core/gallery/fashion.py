"""The Fashion-MNIST demo set: Debian's `dataset-fashion-mnist`, 70,000 labelled 28x28 greys.

The package (31 MB) holds the data set's four gzipped IDX files in `usr/share/datasets/
fashion-mnist/` (`train-` and `t10k-` `images-idx3-ubyte.gz` / `labels-idx1-ubyte.gz`). It is
fetched like the stamps (`fetch_package`) into `data/demo/fashion-mnist/`, and the chosen images
are written there as PNGs under `png/<class>/`, each once (a written file is complete: it was
renamed into place), so a second run writes nothing.

Labels are the data set's official class names, handed to ingest with each file, never read
from folders (`T-shirt/top` holds a slash). The IDX files' train/test split is not kept: the
two are read as one sequence (train first) and every image gets the product's own split from
its id, as every ingested image does.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
import zlib
from pathlib import Path

import numpy as np

from core.files import atomic_write
from core.gallery.demo import DemoDataError, Runner, fetch_package
from core.gallery.images import grey_png_bytes

log = logging.getLogger(__name__)

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = "fashion-mnist"  # below the demo folder
IDX_SUBDIR = Path("usr/share/datasets/fashion-mnist")
IDX_PARTS = ("train", "t10k")  # file name prefixes, read in this order
# The official names of labels 0-9 (the data set's README, "Labels").
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# IDX type codes (the third byte of the magic number) and their big-endian element types.
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """An IDX file's bytes as an array of the shape its header declares.

    The header is the magic number (two zero bytes, a type code, the number of dimensions) and
    one big-endian uint32 per dimension; the data must fill that shape exactly. Anything else
    raises `DemoDataError` naming `name`.
    """
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DemoDataError(
            f"{name} is not an IDX file: it starts with {data[:4].hex() or 'nothing'}, not 0000, "
            "a type code and a dimension count."
        )
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DemoDataError(f"{name} is truncated: it ends inside its {ndim}-dimension header.")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has bytes past its data"
        raise DemoDataError(
            f"{name} {problem}: {len(data):,} bytes where its header (shape {shape}) "
            f"needs {expected:,}."
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """`parse_idx` of a file, gunzipped first when it is gzip (by its magic, not its name)."""
    data = path.read_bytes()
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DemoDataError(f"{path.name} is a damaged gzip file ({exc}).") from exc
    return parse_idx(data, path.name)


def read_fashion_mnist(idx_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of the IDX files in `idx_dir`, train then t10k: (images (N, H, W) uint8,
    labels (N,) uint8 in 0-9, names: N file stems such as `train-00042`)."""
    images, labels, names = [], [], []
    for part in IDX_PARTS:
        pixels = read_idx(idx_dir / f"{part}-images-idx3-ubyte.gz")
        classes = read_idx(idx_dir / f"{part}-labels-idx1-ubyte.gz")
        if pixels.ndim != 3 or classes.ndim != 1 or len(pixels) != len(classes):
            raise DemoDataError(
                f"The {part} files do not pair up: images of shape {pixels.shape}, labels of "
                f"shape {classes.shape} (expected (n, height, width) and (n,))."
            )
        if pixels.dtype != np.uint8 or classes.dtype != np.uint8:
            raise DemoDataError(f"The {part} files do not hold unsigned bytes.")
        if len(classes) and classes.max() >= len(FASHION_CLASSES):
            raise DemoDataError(f"The {part} labels go up to {classes.max()}, past 9.")
        images.append(pixels)
        labels.append(classes)
        names += [f"{part}-{i:05d}" for i in range(len(classes))]
    return np.concatenate(images), np.concatenate(labels), names


def stratified_indices(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Which of `labels` (N,) to keep: `limit` of them spread over the classes as evenly as
    their sizes allow, each class's first ones in order; all of them when `limit` is None.

    Shares are dealt round by round: every class still holding images gets an equal share of
    what is left (the lowest class numbers one more each when it does not divide), capped at
    what the class holds. Deterministic, and a larger limit keeps every image a smaller one
    chose. Returns sorted indices into `labels`.
    """
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    quota = dict.fromkeys(classes.tolist(), 0)
    size = dict(zip(classes.tolist(), sizes.tolist(), strict=True))
    left, open_ = limit, list(quota)
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for rank, label in enumerate(open_):
            given = min(size[label] - quota[label], share + (rank < extra))
            quota[label] += given
            left -= given
        open_ = [label for label in open_ if quota[label] < size[label]]
    chosen = [np.flatnonzero(labels == label)[:count] for label, count in quota.items()]
    return np.sort(np.concatenate(chosen))


def _folder(class_name: str) -> str:
    """A class's folder name: `T-shirt/top` -> `t-shirt-top` (the label itself is not a path)."""
    return re.sub(r"[^a-z0-9]+", "-", class_name.lower()).strip("-")


def write_pngs(
    png_dir: Path, images: np.ndarray, labels: np.ndarray, names: list[str], chosen: np.ndarray
) -> dict[Path, str]:
    """The `chosen` images as `png_dir/<class>/<name>.png`, skipping files already there;
    returns each file with its class name, in `chosen`'s order."""
    files: dict[Path, str] = {}
    written = 0
    started = time.perf_counter()
    for i in chosen.tolist():
        class_name = FASHION_CLASSES[labels[i]]
        path = png_dir / _folder(class_name) / f"{names[i]}.png"
        if not path.exists():  # atomic_write renames a finished file into place
            atomic_write(path, grey_png_bytes(images[i]))
            written += 1
        files[path] = class_name
    log.info(
        "%s: wrote %d PNGs, %d were there already (%.1f s)",
        FASHION_DIR,
        written,
        len(files) - written,
        time.perf_counter() - started,
    )
    return files


def fashion_mnist_files(
    demo_dir: Path, limit: int | None = None, run: Runner | None = None
) -> dict[Path, str]:
    """Fetch the package once and write the images `limit` chooses (`stratified_indices`; all
    by default) as PNGs once each; returns the PNGs with their class names, in data-set order."""
    if limit is not None and limit < 1:
        raise DemoDataError(f"The limit must be at least 1 image, not {limit}.")
    workdir = (demo_dir / FASHION_DIR).resolve()
    idx_dir = fetch_package(workdir, FASHION_PACKAGE, IDX_SUBDIR, run)
    try:
        images, labels, names = read_fashion_mnist(idx_dir)
    except (DemoDataError, OSError) as exc:
        raise DemoDataError(
            f"{exc} The unpacked {FASHION_PACKAGE} is damaged: delete {workdir} and run "
            "demo-data again to fetch it afresh."
        ) from exc
    return write_pngs(workdir / "png", images, labels, names, stratified_indices(labels, limit))
