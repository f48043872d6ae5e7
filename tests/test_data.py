"""Data loading: the embedded digits split and the IDX reader on good and bad files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from bayesq.data import IDXFormatError, load_dataset, load_digits, load_mnist, read_idx

_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialize an array in the IDX format (the reference writer for these tests)."""
    code = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fake_mnist(directory, n_train=20, n_test=10, compress=True, labels_train=None):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    parts = {"train": n_train, "t10k": n_test}
    for prefix, n in parts.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        if prefix == "train" and labels_train is not None:
            labels = labels_train
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return directory


def test_digits_split():
    data = load_digits(seed=0)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert len(data.y_test) == pytest.approx(0.25 * 1797, abs=10)
    assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(10))
    again = load_digits(seed=0)
    assert torch.equal(again.x_test, data.x_test)
    other = load_digits(seed=1)
    assert not torch.equal(other.y_test, data.y_test) or not torch.equal(other.x_test, data.x_test)


def test_loaders_are_seeded():
    data = load_digits()
    first = next(iter(data.loaders(32, seed=3)[0]))[1]
    second = next(iter(data.loaders(32, seed=3)[0]))[1]
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="batch_size"):
        data.loaders(0)


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 20).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a.idx", array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:3], "too short"),
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
        (lambda b: b[:3] + b"\x00" + b[4:], "dimensions"),
        (lambda b: b[:3] + b"\x09" + b[4:], "dimensions"),
        (lambda b: b[:8], "truncated header"),
        (lambda b: b[:-5], "truncated data"),
        (lambda b: b + b"\x00\x00", "trailing"),
    ],
)
def test_bad_idx_files(tmp_path, mutate, message):
    good = idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((10, 10), dtype=np.uint8)))
    path = tmp_path / "x.gz"
    path.write_bytes(packed[:-8])  # cut off the gzip trailer
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_idx(tmp_path, compress):
    data = load_mnist(fake_mnist(tmp_path, compress=compress))
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.max() <= 1.0 and data.y_train.dtype == torch.int64
    assert load_dataset(tmp_path).x_test.shape == (10, 1, 28, 28)
    assert len(load_mnist(tmp_path, limit_train=5).y_train) == 5


def test_mnist_mismatch_and_missing(tmp_path):
    fake_mnist(tmp_path, labels_train=np.zeros(19, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="20 images but .* 19 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    fake_mnist(tmp_path)  # repair the training labels; the test labels are written again too
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset(tmp_path / "nowhere")


def test_mnist_wrong_kind_of_file(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((20, 2), np.uint8), True)
    with pytest.raises(IDXFormatError, match="1-D"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8), True)
    with pytest.raises(IDXFormatError, match="outside 0..9"):
        load_mnist(tmp_path)
