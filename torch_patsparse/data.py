"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (gzipped IDX files), as tensors.

No download ever happens: the files are read from ``/usr/share/datasets/fashion-mnist`` (or a
directory given with ``--data`` / ``PATSPARSE_DATA``). Everything fits in memory (60k x 28 x 28
bytes), so batching is a cheap index into one normalised float tensor.
"""
import gzip
import os
import struct
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
# Mean / std of the Fashion-MNIST training images (pixel values scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

INSTALL_HINT = ("Fashion-MNIST not found in {dir!r}. Install the Debian package with\n"
                "    sudo apt-get install dataset-fashion-mnist\n"
                "(files go to /usr/share/datasets/fashion-mnist), or pass --data DIR / set PATSPARSE_DATA "
                "to a directory holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].")


class DataNotFound(FileNotFoundError):
    pass


class BadData(ValueError):
    """A dataset file that cannot be read (truncated, not IDX) or files that do not fit together."""


def default_dir() -> str:
    return os.environ.get("PATSPARSE_DATA") or DEFAULT_DIR  # (set but empty: the default, as unset)


def _find(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataNotFound(INSTALL_HINT.format(dir=directory))


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz (gzip.BadGzipFile is an OSError)
        raise BadData(f"{path}: cannot read: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise BadData(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise BadData(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise BadData(f"{path}: expected {count * dtype.itemsize} data bytes for shape {dims}, "
                      f"found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def available(directory: Optional[str] = None) -> bool:
    directory = directory or default_dir()
    try:
        for split in FILES.values():
            for stem in split:
                _find(directory, stem)
    except DataNotFound:
        return False
    return True


def load_split(split: str, directory: Optional[str] = None, limit: Optional[int] = None,
               normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (images float32 [N, 1, 28, 28] normalised, labels int64 [N]) for "train" or "test".

    ``limit`` keeps the first ``limit`` examples (class-balanced enough for Fashion-MNIST, whose
    files are shuffled)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = directory or default_dir()
    if not os.path.isdir(directory):
        raise DataNotFound(INSTALL_HINT.format(dir=directory))
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(directory, img_stem))
    labels = read_idx(_find(directory, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise BadData(f"{directory}: inconsistent {split} files: images {images.shape}, labels {labels.shape}")
    if images.shape[1:] != (28, 28):  # the models take Fashion-MNIST's 28x28
        raise BadData(f"{directory}: {split} images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's are 28x28")
    if labels.size and int(labels.max()) > 9:
        raise BadData(f"{directory}: {split} labels go up to {int(labels.max())}; Fashion-MNIST has classes 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if normalize:
        x = (x.float() / 255.0 - MEAN) / STD
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: Optional[torch.Generator] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches over in-memory tensors; shuffled with ``generator`` when asked (deterministic)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
