"""Data loading: the embedded digits split, Split helpers, and the IDX reader on good and bad files.

Every MNIST test builds its own tiny IDX files under tmp_path; none reads ../shared.
"""

import gzip
import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch

from bayesq.data import IDXFormatError, Split, load_dataset, load_digits, load_mnist, read_idx
from tests.common import run_limited

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


def fake_mnist(directory, n_train=20, n_test=10, compress=True, size=28):
    """The four MNIST files with random pixels and labels; returns the directory."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in {"train": n_train, "t10k": n_test}.items():
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return directory


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_and_range(digits):
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.x_train.shape[1:] == digits.x_test.shape[1:] == (1, 8, 8)
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10 and digits.name == "digits"
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for x in (digits.x_train, digits.x_test):
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert digits.x_train.max() == 1.0  # 16/16: the scale is pixel counts / 16, not / max
    assert len(digits.y_test) == pytest.approx(0.25 * 1797, abs=10)


def test_digits_split_is_seeded_and_stratified(digits):
    again = load_digits(seed=0)
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)
    other = load_digits(seed=1)
    assert not torch.equal(other.x_test, digits.x_test)
    train_counts = torch.bincount(digits.y_train, minlength=10)
    test_counts = torch.bincount(digits.y_test, minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    share = test_counts / (train_counts + test_counts)
    assert torch.allclose(share, torch.full((10,), 0.25), atol=0.01)


def test_digits_extreme_fractions_keep_every_class():
    for fraction in (0.001, 0.999):
        data = load_digits(test_fraction=fraction)
        assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(10))
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="test_fraction"):
            load_digits(test_fraction=fraction)


# --- Split --------------------------------------------------------------------------------------


def test_loaders_are_seeded(digits):
    def order(seed):
        return torch.cat([y for _, y in digits.loaders(64, seed=seed)[0]])

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert torch.equal(order(3).sort().values, digits.y_train.sort().values)  # each image once
    test_loader = digits.loaders(64, seed=3)[1]
    assert torch.equal(torch.cat([x for x, _ in test_loader]), digits.x_test)  # not shuffled
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            digits.loaders(bad)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match="batch_size must be an integer >= 1"):
            digits.loaders(bad)


def test_flat_to_and_subset(digits):
    flat = digits.flat()
    assert flat.x_train.shape == (len(digits.y_train), 64) and flat.image_shape == (64,)
    assert flat.x_train.data_ptr() == digits.x_train.data_ptr()  # a view, no copy
    assert torch.equal(flat.x_test.view(-1, 1, 8, 8), digits.x_test)
    moved = load_digits(device="cpu")
    assert moved.x_train.device.type == "cpu" and digits.to("cpu").y_test.device.type == "cpu"
    small = digits.subset(train=30, test=20, seed=1)
    assert small.x_train.shape == (30, 1, 8, 8) and len(small.y_test) == 20
    assert torch.equal(small.y_train, digits.subset(30, 20, seed=1).y_train)
    assert "train=1347" in repr(digits)


def test_split_rejects_inconsistent_tensors():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="y_train must be 1-D int64"):
        Split("t", x, y.float(), x, y)
    with pytest.raises(ValueError, match="one input per label"):
        Split("t", x, y, x[:3], y)
    with pytest.raises(ValueError, match="differ in shape"):
        Split("t", x, y, torch.zeros(4, 1, 3, 3), y)
    with pytest.raises(TypeError, match="torch tensors"):
        Split("t", x.numpy(), y, x, y)


# --- IDX reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 20).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(200, 224, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a.idx", array, compress)
    read = read_idx(path)
    assert read.dtype == array.dtype and read.dtype.isnative and read.flags.writeable
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("shape", [(5,), (0, 28, 28), (2, 1, 3, 2)])
def test_idx_round_trip_shapes(tmp_path, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) / 7
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "s.idx", array)), array)


def test_idx_is_big_endian_by_hand(tmp_path):
    # Bytes written by hand, not by the helper, so a byte-order slip in both would not hide.
    path = tmp_path / "h.idx"
    path.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(path), np.array([258, -2], dtype=np.int16))


def test_gzip_is_told_by_magic_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_named_plain = write_idx(tmp_path / "plain.gz", array, compress=False)
    plain_named_gz = write_idx(tmp_path / "packed-idx1-ubyte", array, compress=True)
    np.testing.assert_array_equal(read_idx(gz_named_plain), array)
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)


_GOOD = idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "0 bytes, too short"),
        (_GOOD[:3], "3 bytes, too short"),
        (b"\x01" + _GOOD[1:], "bad magic 01 00 08 03"),
        (_GOOD[:1] + b"\x05" + _GOOD[2:], "bad magic"),
        (_GOOD[:2] + b"\x07" + _GOOD[3:], "unknown IDX type code 0x07"),
        (_GOOD[:3] + b"\x00" + _GOOD[4:], "0 dimensions"),
        (_GOOD[:3] + b"\x05" + _GOOD[4:], "5 dimensions"),
        (_GOOD[:3] + b"\xff" + _GOOD[4:], "255 dimensions"),
        (_GOOD[:8], "truncated header"),
        (_GOOD[:-5], r"truncated data: shape \(3, 4, 5\) of uint8 needs 60 bytes, found 55"),
        (_GOOD[:4] + b"\xff" * 12, r"needs 79228162458924105385300197375 bytes, found 0"),
        (_GOOD + b"\x00\x00", "2 trailing bytes"),
        (gzip.compress(_GOOD)[:-8], "corrupt gzip"),  # the CRC and length trailer cut off
        (b"\x1f\x8b" + _GOOD, "corrupt gzip"),  # gzip magic, then no gzip stream
        (gzip.compress(_GOOD) + b"junk", "corrupt gzip"),
        (gzip.compress(b"\x00\x00"), "decompressed file holds 2 bytes, too short"),
        (gzip.compress(_GOOD[:-1]), "truncated data"),
    ],
)
def test_bad_idx_files(tmp_path, content, message):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_idx_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


# MNIST's training images: 60000 x 28 x 28 bytes = 47,040,000 promised data bytes
_MNIST_HEADER = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 28)
_MNIST_BYTES = 60000 * 28 * 28


def zeros_gzip(header: bytes, zero_bytes: int) -> bytes:
    """A gzip stream of `header` then `zero_bytes` zeros, built in a few milliseconds however
    large: after a full flush deflate's output no longer depends on what came before, so the
    block of one 16 MiB run of zeros is repeated as often as needed (zero_bytes rounded up to
    16 MiB). The stream is left unfinished: the readers under test must stop long before."""
    run = bytes(16 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: with a gzip header
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    deflate.compress(run), deflate.flush(zlib.Z_FULL_FLUSH)  # the first run's block may differ
    block = deflate.compress(run) + deflate.flush(zlib.Z_FULL_FLUSH)
    return head + block * -(-zero_bytes // len(run))


_READ_UNDER_CAP = """
import json, resource
from bayesq.data import IDXFormatError, read_idx
rows = []
for path in PATHS:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_idx(path)
        message = None
    except IDXFormatError as err:
        message = str(err)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    rows.append({"path": path, "message": message, "peak_growth_mib": grown / 1024})
print(json.dumps(rows))
"""


def test_idx_reader_memory_is_bounded_by_the_valid_content(tmp_path):
    """Under a 4 GiB address-space cap, files whose header promises more (or less) than they
    hold fail with IDXFormatError after allocating little more than what the header promises:
    1 MB of gzip inflating to 47 MB of data and then 1 GiB of trailing zeros (which a reader
    that inflates the whole stream first holds in memory at once), the same header over 1 MiB
    of data, and headers claiming dimensions no file of its size can hold."""
    files = {
        "bomb.gz": (
            zeros_gzip(_MNIST_HEADER, _MNIST_BYTES + (1 << 30)),
            "at least 1048576 trailing",
        ),
        "short.gz": (  # incompressible, so the file is large enough for the promise
            gzip.compress(_MNIST_HEADER + np.random.default_rng(0).bytes(1 << 20)),
            "truncated data.*found 1048576",
        ),
        "huge.gz": (
            gzip.compress(bytes([0, 0, 0x08, 3]) + b"\xff" * 12 + bytes(4096)),
            "more than a gzip file of",
        ),
        "huge": (bytes([0, 0, 0x0E, 4]) + b"\xff" * 16 + bytes(4096), "truncated data.*found 4096"),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    assert (tmp_path / "bomb.gz").stat().st_size < 2 << 20  # a small file, a big promise
    paths = [str(tmp_path / name) for name in files]
    run = run_limited(f"PATHS = {paths!r}\n" + _READ_UNDER_CAP, limit_gib=4)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    for row, (name, (_, message)) in zip(rows, files.items(), strict=True):
        assert row["message"] is not None, f"{name} was accepted"
        assert re.search(message, row["message"]) and row["path"] in row["message"], row
        # at most 45 MiB of data (the promise of the bomb), one 1 MiB piece, and allocator slack
        assert row["peak_growth_mib"] < 64, row


@pytest.mark.parametrize("compress", [False, True])
def test_idx_trailing_and_missing_bytes_name_the_file(tmp_path, compress):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    good = idx_bytes(array)
    for content, message in [
        (good + b"\x00" * 3, "3 trailing bytes after the 48 data bytes"),
        (good[:-3], r"truncated data: shape \(2, 3, 4\) of int16 needs 48 bytes, found 45"),
    ]:
        path = tmp_path / "cut-idx3-ubyte"
        path.write_bytes(gzip.compress(content) if compress else content)
        with pytest.raises(IDXFormatError, match=message) as info:
            read_idx(path)
        assert str(path) in str(info.value)
    path.write_bytes(gzip.compress(good) if compress else good)
    read = read_idx(path)
    np.testing.assert_array_equal(read, array)
    assert read.dtype == np.int16 and read.dtype.isnative and read.flags.writeable


# --- MNIST --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_idx(tmp_path, compress):
    data = load_mnist(fake_mnist(tmp_path, compress=compress))
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.name == "mnist" and data.num_classes == 10
    raw = read_idx(tmp_path / f"t10k-images-idx3-ubyte{'.gz' if compress else ''}")
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), raw / 255.0, rtol=1e-6)  # order kept
    assert load_dataset(tmp_path).x_test.shape == (10, 1, 28, 28)


def test_load_mnist_any_image_size_and_plain_beside_gz(tmp_path):
    fake_mnist(tmp_path, size=5, compress=False)
    assert load_mnist(tmp_path).image_shape == (1, 5, 5)
    fake_mnist(tmp_path, size=7, compress=True)  # both names present: the .gz ones are read
    assert load_mnist(tmp_path).image_shape == (1, 7, 7)


def test_load_mnist_limit_train(tmp_path):
    fake_mnist(tmp_path)
    full = load_mnist(tmp_path)
    part = load_mnist(tmp_path, limit_train=5, seed=1)
    assert len(part.y_train) == 5 and len(part.y_test) == 10  # the test set stays whole
    assert torch.equal(part.x_train, load_mnist(tmp_path, limit_train=5, seed=1).x_train)
    assert not torch.equal(part.x_train, load_mnist(tmp_path, limit_train=5, seed=2).x_train)
    # a subset of the training images, in file order
    rows = [int((full.x_train == x).flatten(1).all(1).nonzero()) for x in part.x_train]
    assert rows == sorted(rows)
    for bad in (0, 21):
        with pytest.raises(ValueError, match=r"limit_train must lie in 1\.\.20"):
            load_mnist(tmp_path, limit_train=bad)


def test_mnist_count_mismatch_names_both_files(tmp_path):
    fake_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(19, dtype=np.uint8), compress=True)
    with pytest.raises(IDXFormatError, match="20 images but .* 19 labels") as info:
        load_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(info.value)
    assert str(labels) in str(info.value)


@pytest.mark.parametrize("name", ["train-images", "train-labels", "t10k-images", "t10k-labels"])
def test_mnist_missing_file(tmp_path, name):
    fake_mnist(tmp_path)
    idx = "idx3" if "images" in name else "idx1"
    (tmp_path / f"{name}-{idx}-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"{name}-{idx}-ubyte") as info:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_mnist_missing_directory_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset(tmp_path / "file")
    assert load_dataset("digits").name == "digits"


@pytest.mark.parametrize(
    "file, array, message",
    [
        ("train-labels-idx1-ubyte.gz", np.zeros((20, 2), np.uint8), "1-D unsigned bytes"),
        ("train-labels-idx1-ubyte.gz", np.zeros(20, np.int32), "1-D unsigned bytes"),
        ("t10k-labels-idx1-ubyte.gz", np.full(10, 12, np.uint8), "label 12 outside 0..9"),
        ("train-images-idx3-ubyte.gz", np.zeros((20, 784), np.uint8), "3-D unsigned bytes"),
        ("t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.float32), "3-D unsigned bytes"),
    ],
)
def test_mnist_wrong_kind_of_file(tmp_path, file, array, message):
    fake_mnist(tmp_path)
    write_idx(tmp_path / file, array, compress=True)
    with pytest.raises(IDXFormatError, match=message) as info:
        load_mnist(tmp_path)
    assert str(tmp_path / file) in str(info.value)
