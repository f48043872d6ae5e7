"""Data: scikit-learn's bundled 8x8 digits (the embedded default) and MNIST from IDX files.

Images come as float32 tensors (N, 1, H, W) scaled to [0, 1], labels as int64 (N,). Nothing is
downloaded: digits ship inside scikit-learn, MNIST is read from a directory the user names.

The IDX reader validates everything it reads (magic, type code, dimensions, exact byte count,
gzip integrity) and raises :class:`IDXFormatError` naming the file and the fault.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["IDXFormatError", "Split", "load_dataset", "load_digits", "load_mnist", "read_idx"]

# IDX type codes -> big-endian numpy dtypes (LeCun's format description).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAX_IDX_DIMS = 4
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file is malformed, truncated, or does not match its companion file."""


@dataclass
class Split:
    """A train/test split. x_*: float32 (N, C, H, W) in [0, 1]; y_*: int64 (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def loaders(self, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders; the training order is shuffled by a generator seeded with seed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        train = DataLoader(
            TensorDataset(self.x_train, self.y_train),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        test = DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size)
        return train, test

    def subset(self, train: int, test: int, seed: int = 0) -> Split:
        """A random subset of each part (for smoke runs), drawn with the given seed."""
        g = torch.Generator().manual_seed(seed)
        i = torch.randperm(len(self.y_train), generator=g)[:train]
        j = torch.randperm(len(self.y_test), generator=g)[:test]
        return Split(
            f"{self.name}[{train}/{test}]",
            self.x_train[i],
            self.y_train[i],
            self.x_test[j],
            self.y_test[j],
            self.num_classes,
        )


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's 8x8 handwritten digits (1,797 images), stratified seeded train/test split.

    Pixels (0..16) are scaled to [0, 1]. The same seed always gives the same split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_index = []
    for cls in np.unique(labels):  # stratified: every class split in the same proportion
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_index.extend(members[: round(test_fraction * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_index] = True
    return Split(
        "digits",
        torch.from_numpy(images[~is_test]),
        torch.from_numpy(labels[~is_test]),
        torch.from_numpy(images[is_test]),
        torch.from_numpy(labels[is_test]),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip, told apart by the gzip magic bytes) into a numpy array.

    Layout: 2 zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes,
    then the data in C order, big-endian. Raises IDXFormatError for any deviation.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4:
        raise IDXFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: bad magic {raw[:4].hex()} (must start with two zero bytes)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if not 1 <= ndim <= _MAX_IDX_DIMS:
        raise IDXFormatError(f"{path}: {ndim} dimensions (expected 1 to {_MAX_IDX_DIMS})")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise IDXFormatError(f"{path}: truncated header ({len(raw)} bytes, need {header_end})")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_end
    if found < expected:
        raise IDXFormatError(
            f"{path}: truncated data: shape {shape} needs {expected} bytes, found {found}"
        )
    if found > expected:
        raise IDXFormatError(
            f"{path}: {found - expected} trailing bytes after the data of shape {shape}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"{stem}(.gz) not found in {data_dir}")


def _read_pair(data_dir: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_path = _find(data_dir, f"{prefix}-images-idx3-ubyte")
    label_path = _find(data_dir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXFormatError(
            f"{image_path}: expected 3-D unsigned bytes (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXFormatError(
            f"{label_path}: expected 1-D unsigned bytes (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise IDXFormatError(f"{label_path}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy((images.astype(np.float32) / 255.0)[:, None])
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(data_dir: str | os.PathLike, limit_train: int | None = None) -> Split:
    """MNIST from the four IDX files (gzip or plain) in data_dir; the official test set is the
    test part. `limit_train` keeps only the first that many training images."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST directory {data_dir} does not exist")
    x_train, y_train = _read_pair(data_dir, "train")
    x_test, y_test = _read_pair(data_dir, "t10k")
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    return Split("mnist", x_train, y_train, x_test, y_test)


def load_dataset(name_or_dir: str | os.PathLike) -> Split:
    """ "digits" for the embedded default, otherwise a directory of MNIST IDX files."""
    if str(name_or_dir) == "digits":
        return load_digits()
    if Path(name_or_dir).is_dir():
        return load_mnist(name_or_dir)
    raise ValueError(f"unknown data set {str(name_or_dir)!r}: use 'digits' or an MNIST directory")
