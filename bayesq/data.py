"""Data: scikit-learn's bundled 8x8 digits (the embedded default) and MNIST from IDX files.

Every loader returns a :class:`Split`: images as float32 tensors (N, C, H, W) holding intensities
scaled to [0, 1] (0 = background, 1 = full ink), labels as int64 class indices (N,). Nothing is
downloaded: the digits ship inside scikit-learn, MNIST is read from a directory the user names.

The IDX reader validates everything it reads (magic, type code, dimensions, exact byte count, gzip
integrity) and raises :class:`IDXFormatError` naming the file and the fault, so a truncated download
fails loudly instead of training on half a data set. Nothing here unpickles.

>>> data = load_digits(seed=0)
>>> data.x_train.shape, data.x_test.shape, data.num_classes
(torch.Size([1347, 1, 8, 8]), torch.Size([450, 1, 8, 8]), 10)
>>> data.flat().x_train.shape  # (N, C*H*W) for an MLP
torch.Size([1347, 64])

References:
    LeCun, Cortes, Burges. The MNIST database of handwritten digits (IDX format description).
    http://yann.lecun.com/exdb/mnist/
    Alpaydin, Kaynak. Optical Recognition of Handwritten Digits. UCI ML Repository, 1998
    (the 8x8 digits of ``sklearn.datasets.load_digits``: its 1,797-image test part).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .checks import integer

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
# The format allows up to 255 dimensions; real files use 1 (labels) or 3 (images). A larger count
# is far more likely a corrupt header than data, and rejecting it keeps the header read bounded.
_MAX_IDX_DIMS = 4
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate (RFC 1951) inflates one compressed byte into at most 1032 (zlib's documented maximum
# compression factor), so a gzip file of n bytes holds at most 1032 n bytes of data.
_MAX_DEFLATE_RATIO = 1032
# Data is read in pieces of this size (1 MiB): a lying header costs at most one piece in excess.
_READ_CHUNK = 1 << 20
# Bytes read past the promised data to tell (and count) trailing bytes, at most this many.
_TRAILING_PROBE = 1 << 20
_MNIST_CLASSES = 10


class IDXFormatError(ValueError):
    """An IDX file is malformed, truncated, or does not match its companion file."""


@dataclass(eq=False, repr=False)  # eq on tensors is ambiguous; the default repr prints every pixel
class Split:
    """A train/test split of an image classification data set.

    Attributes:
        name: short name of the data set ("digits", "mnist", ...).
        x_train, x_test: float32 inputs (N, C, H, W), intensities in [0, 1]; after :meth:`flat`,
            (N, C*H*W).
        y_train, y_test: int64 class indices (N,), in ``0 .. num_classes - 1``.
        num_classes: number of classes.

    ``image_shape`` (derived, never stored, so it cannot disagree with the tensors) is the shape of
    one input, (C, H, W), or (C*H*W,) after :meth:`flat`.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"Split {self.name!r}: x_{part} and y_{part} must be torch tensors")
            if y.ndim != 1 or y.dtype != torch.int64:
                raise ValueError(
                    f"Split {self.name!r}: y_{part} must be 1-D int64, got {y.dtype} {tuple(y.shape)}"
                )
            if x.ndim < 2 or len(x) != len(y):
                raise ValueError(
                    f"Split {self.name!r}: x_{part} {tuple(x.shape)} does not hold one input per "
                    f"label of y_{part} ({len(y)} labels)"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Split {self.name!r}: train inputs {tuple(self.x_train.shape[1:])} and test inputs "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )

    def __repr__(self) -> str:
        return (
            f"Split({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"device={self.x_train.device})"
        )

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W), or (C*H*W,) for a flattened split."""
        return tuple(self.x_train.shape[1:])

    def _replace(self, name: str, x_train, y_train, x_test, y_test) -> Split:
        return Split(name, x_train, y_train, x_test, y_test, self.num_classes)

    def to(self, device: torch.device | str) -> Split:
        """The same split with every tensor on ``device``."""
        return self._replace(
            self.name,
            *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
        )

    def flat(self) -> Split:
        """The same split with inputs flattened to (N, C*H*W) for an MLP.

        The tensors are views of this split's (no copy) when its inputs are contiguous.
        """
        return self._replace(
            self.name, self.x_train.flatten(1), self.y_train, self.x_test.flatten(1), self.y_test
        )

    def loaders(self, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """(train, test) DataLoaders of (x, y) batches.

        The training order is reshuffled every epoch by a ``torch.Generator`` seeded with ``seed``,
        so two loaders built with the same seed yield the same batches; the test order is fixed.
        """
        integer("batch_size", batch_size)
        train = DataLoader(
            TensorDataset(self.x_train, self.y_train),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        test = DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size)
        return train, test

    def subset(self, train: int, test: int, seed: int = 0) -> Split:
        """A random subset of ``train`` training and ``test`` test examples (for smoke runs).

        Drawn without replacement with a generator seeded by ``seed``; a part smaller than asked
        for is kept whole (in shuffled order).
        """
        g = torch.Generator().manual_seed(seed)
        i = torch.randperm(len(self.y_train), generator=g)[:train].to(self.y_train.device)
        j = torch.randperm(len(self.y_test), generator=g)[:test].to(self.y_test.device)
        return self._replace(
            f"{self.name}[{train}/{test}]",
            self.x_train[i],
            self.y_train[i],
            self.x_test[j],
            self.y_test[j],
        )


def _to_split(name: str, arrays: tuple[np.ndarray, ...], num_classes: int, device) -> Split:
    split = Split(name, *(torch.from_numpy(a) for a in arrays), num_classes=num_classes)
    return split if device is None else split.to(device)


def load_digits(
    seed: int = 0, test_fraction: float = 0.25, device: torch.device | str | None = None
) -> Split:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) as a seeded stratified split.

    Images: float32 (N, 1, 8, 8), the 0..16 pixel counts divided by 16 into [0, 1]; labels int64.
    Each class is split on its own, ``round(test_fraction * class size)`` test images drawn by
    ``numpy.random.default_rng(seed)`` but at least one and at most all but one, so every class
    appears in both parts. The same seed always gives the same split; both parts keep the
    original order of the data set. ``device``: where the tensors go (CPU when None).
    """
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):  # stratified: every class split in the same proportion
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
        is_test[members[:n_test]] = True
    arrays = (images[~is_test], labels[~is_test], images[is_test], labels[is_test])
    return _to_split("digits", arrays, len(bunch.target_names), device)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed, into a numpy array in native byte order.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions d, d big-endian uint32 sizes, then the
    data in C order, big-endian. Compression is told by the gzip magic bytes 1f 8b, not by the
    file name. Returns a writable array of that shape and type.

    The file is untrusted, so the header is read and checked first and then exactly the bytes it
    promises are read, in pieces of 1 MiB: memory grows with the data actually present,
    never with what the header claims. A plain file must hold exactly the promised bytes (checked
    against its size before anything is allocated); a gzip stream is decompressed only as far as
    the data and one probe beyond it, so a small file that inflates to gigabytes past (or short
    of) its promised size fails after reading about the promised size.

    Raises:
        IDXFormatError: naming the file, for a corrupt gzip stream, a file too short for its
            header, a bad magic, an unknown type code, d outside 1..4, fewer data bytes than the
            sizes announce (or more than a file of this size can hold), or bytes left after the
            data.
        FileNotFoundError: if there is no such file.
    """
    path = Path(path)
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not compressed:
            return _IDXStream(path, file, "file", file_size).read()
        with gzip.GzipFile(fileobj=file, mode="rb") as stream:
            # deflate inflates one byte into at most 1032: a bound on what this file can hold
            return _IDXStream(
                path, stream, "decompressed file", _MAX_DEFLATE_RATIO * file_size, exact=False
            ).read()


class _IDXStream:
    """Reads one IDX file from an open binary stream; `capacity` bounds the bytes it can hold
    (the exact size of a plain file, or an upper bound for a gzip stream: `exact=False`)."""

    def __init__(self, path: Path, stream, what: str, capacity: int, exact: bool = True):
        self.path, self.stream, self.what = path, stream, what
        self.capacity, self.exact = capacity, exact
        self.consumed = 0  # bytes read so far

    def _read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the stream)."""
        try:
            chunk = self.stream.read(n)
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            if self.exact:  # a plain file: a real read error, not a format fault
                raise
            raise IDXFormatError(f"{self.path}: corrupt gzip stream ({err})") from err
        self.consumed += len(chunk)
        return chunk

    def _header(self) -> tuple[tuple[int, ...], np.dtype]:
        magic = self._read(4)
        if len(magic) < 4:
            raise IDXFormatError(
                f"{self.path}: {self.what} holds {len(magic)} bytes, too short for the 4-byte IDX "
                "magic"
            )
        if magic[0] != 0 or magic[1] != 0:
            raise IDXFormatError(
                f"{self.path}: bad magic {magic.hex(' ')} (an IDX file starts with two zero bytes)"
            )
        type_code, ndim = magic[2], magic[3]
        if type_code not in _IDX_DTYPES:
            known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
            raise IDXFormatError(
                f"{self.path}: unknown IDX type code 0x{type_code:02x} (known: {known})"
            )
        if not 1 <= ndim <= _MAX_IDX_DIMS:
            raise IDXFormatError(
                f"{self.path}: header announces {ndim} dimensions (expected 1 to {_MAX_IDX_DIMS})"
            )
        sizes = self._read(4 * ndim)
        if len(sizes) < 4 * ndim:
            raise IDXFormatError(
                f"{self.path}: truncated header: {ndim} dimensions need {4 + 4 * ndim} bytes, "
                f"{self.what} holds {self.consumed}"
            )
        shape = tuple(int(v) for v in np.frombuffer(sizes, dtype=">u4"))
        return shape, _IDX_DTYPES[type_code]

    def read(self) -> np.ndarray:
        shape, dtype = self._header()
        # Python ints: four uint32 sizes can multiply past int64 in a corrupt header.
        expected = math.prod(shape) * dtype.itemsize
        room = self.capacity - self.consumed
        where = f"shape {shape} of {dtype.name} needs {expected} bytes"
        if self.exact and room < expected:
            raise IDXFormatError(f"{self.path}: truncated data: {where}, found {room}")
        if self.exact and room > expected:
            raise IDXFormatError(
                f"{self.path}: {room - expected} trailing bytes after the {expected} data bytes "
                f"of shape {shape}"
            )
        if room < expected:
            raise IDXFormatError(
                f"{self.path}: truncated data: {where}, more than a gzip file of "
                f"{self.capacity // _MAX_DEFLATE_RATIO} bytes can hold"
            )
        # Grown piece by piece, so that a lying header costs at most one piece beyond the data
        # present; bytearray grows in place (realloc), without a second copy of the data.
        data = bytearray()
        while len(data) < expected:
            chunk = self._read(min(_READ_CHUNK, expected - len(data)))
            if not chunk:
                raise IDXFormatError(f"{self.path}: truncated data: {where}, found {len(data)}")
            data += chunk
        trailing = len(self._read(_TRAILING_PROBE))
        if trailing:
            count = f"{trailing}" if trailing < _TRAILING_PROBE else f"at least {trailing}"
            raise IDXFormatError(
                f"{self.path}: {count} trailing bytes after the {expected} data bytes of "
                f"shape {shape}"
            )
        array = np.frombuffer(data, dtype=dtype).reshape(shape)  # writable: data is a bytearray
        if not dtype.isnative:  # to native order in place: no second copy of the data
            array = array.byteswap(inplace=True).view(dtype.newbyteorder())
        return array


def _find(data_dir: Path, stem: str) -> Path:
    # The gzip name first: it is how MNIST is distributed; a plain file is the unpacked copy.
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"MNIST file {stem} (or {stem}.gz) not found in directory {data_dir}")


def _read_pair(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (images uint8 (N, H, W), labels uint8 (N,)) of one part of MNIST."""
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
    if len(labels) and labels.max() >= _MNIST_CLASSES:
        raise IDXFormatError(
            f"{label_path}: label {int(labels.max())} outside 0..{_MNIST_CLASSES - 1}"
        )
    return images, labels


def _as_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    x = images.astype(np.float32)
    x /= 255.0  # in place: MNIST is large enough that a second float copy is worth avoiding
    return x[:, None]


def load_mnist(
    data_dir: str | os.PathLike,
    seed: int = 0,
    limit_train: int | None = None,
    device: torch.device | str | None = None,
) -> Split:
    """MNIST from its four IDX files in ``data_dir``; the official test set is the test part.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each either plain or with ``.gz`` (the .gz one when both exist).
    Images: float32 (N, 1, H, W), the 0..255 grey levels divided by 255 into [0, 1] (any H, W
    are accepted; MNIST's are 28); labels int64 (N,) in 0..9.

    ``limit_train``: keep only this many training images, drawn without replacement by
    ``numpy.random.default_rng(seed)`` and kept in file order; ``seed`` has no other use (the
    test set is always whole). ``device``: where the tensors go (CPU when None).

    Raises:
        FileNotFoundError: naming the directory, or the missing file and the directory.
        IDXFormatError: for a malformed file, images that are not 3-D uint8, labels that are not
            1-D uint8 in 0..9, or image and label files of different lengths (naming both).
        ValueError: for ``limit_train`` below 1 or above the number of training images.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST directory {data_dir} does not exist or is not a directory")
    train_images, train_labels = _read_pair(data_dir, "train")
    test_images, test_labels = _read_pair(data_dir, "t10k")
    if limit_train is not None:
        n = len(train_labels)
        if isinstance(limit_train, bool) or not isinstance(limit_train, int | np.integer):
            raise ValueError(f"limit_train must be an integer or None, got {limit_train!r}")
        if not 1 <= limit_train <= n:
            raise ValueError(f"limit_train must lie in 1..{n} (training images), got {limit_train}")
        keep = np.sort(np.random.default_rng(seed).choice(n, size=int(limit_train), replace=False))
        train_images, train_labels = train_images[keep], train_labels[keep]
    arrays = (
        _as_float_images(train_images),
        train_labels.astype(np.int64),
        _as_float_images(test_images),
        test_labels.astype(np.int64),
    )
    return _to_split("mnist", arrays, _MNIST_CLASSES, device)


def load_dataset(
    name_or_dir: str | os.PathLike, *, seed: int = 0, device: torch.device | str | None = None
) -> Split:
    """``"digits"`` for the embedded default, otherwise a directory of MNIST IDX files.

    The name wins over a directory that happens to be called ``digits``; pass ``./digits`` for
    that one. ``seed`` and ``device`` are passed on to :func:`load_digits` / :func:`load_mnist`.

    Raises:
        ValueError: if ``name_or_dir`` is neither ``"digits"`` nor an existing directory.
    """
    if isinstance(name_or_dir, str) and name_or_dir == "digits":
        return load_digits(seed=seed, device=device)
    if Path(name_or_dir).is_dir():
        return load_mnist(name_or_dir, seed=seed, device=device)
    raise ValueError(
        f"unknown data set {str(name_or_dir)!r}: use 'digits' or a directory of MNIST IDX files"
    )
