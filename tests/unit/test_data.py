"""The IDX reader against the real MNIST files and against corrupted copies of them."""

import gzip
import hashlib
import struct
from pathlib import Path

import pytest
import torch

from training.data import DataError, load_mnist, read_idx, resolve_data_dir

# Published md5 sums of the uncompressed canonical files (see shared/mnist/README.md).
MD5 = {
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_real_mnist_has_the_right_shapes_and_labels(mnist) -> None:
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.train_images.dtype == torch.uint8
    assert set(mnist.test_labels.tolist()) == set(range(10))
    # The first test image is a 7, the first training image a 5, as everyone who has met MNIST knows.
    assert int(mnist.test_labels[0]) == 7
    assert int(mnist.train_labels[0]) == 5


def test_reader_returns_the_exact_bytes_of_the_file(mnist_dir: Path) -> None:
    for stem, md5 in MD5.items():
        raw = gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5
        ndim = raw[3]
        tensor = read_idx(mnist_dir / f"{stem}.gz", ndim=ndim)
        assert tensor.numpy().tobytes() == raw[4 + 4 * ndim :]


def test_plain_and_gzipped_files_read_alike(mnist_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert torch.equal(read_idx(plain, 1), read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", 1))


@pytest.fixture
def labels_bytes(mnist_dir: Path) -> bytes:
    return gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw: raw[:-10], "truncated or corrupt"),
        (lambda raw: raw + b"\x00", "truncated or corrupt"),
        (lambda raw: b"\x00\x00\x08\x03" + raw[4:], "bad magic number"),
        (lambda raw: b"\x00\x00\x0d\x01" + raw[4:], "bad magic number"),
        (lambda raw: b"PK\x03\x04" + raw[4:], "bad magic number"),
        (lambda raw: raw[:6], "shorter than an IDX header"),
        (lambda raw: raw[:4] + struct.pack(">I", 20000) + raw[8:], "truncated or corrupt"),
    ],
)
def test_corrupt_files_are_refused_naming_the_file(
    tmp_path: Path, labels_bytes: bytes, mangle, message
) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(mangle(labels_bytes))
    with pytest.raises(DataError, match=message) as info:
        read_idx(bad, 1)
    assert str(bad) in str(info.value)


def test_a_broken_gzip_is_refused(tmp_path: Path, mnist_dir: Path) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(bad, 1)


def test_a_file_with_the_wrong_count_is_refused(tmp_path: Path, mnist_dir: Path) -> None:
    """A well-formed file with too few items is still not MNIST."""
    for path in mnist_dir.glob("*-ubyte.gz"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    raw = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    short = raw[:4] + struct.pack(">I", 100) + raw[8:108]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(short))
    with pytest.raises(DataError, match="100 items, expected 10000"):
        load_mnist(tmp_path, download=False)


def test_source_order_flag_then_env_then_local(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_DATA_DIR", str(mnist_dir))
    assert resolve_data_dir(None, download=False) == mnist_dir
    # A flag naming a folder with the data wins over the variable.
    other = tmp_path / "other" / "MNIST" / "raw"  # torchvision's layout is found too
    other.mkdir(parents=True)
    for path in mnist_dir.glob("*-ubyte.gz"):
        (other / path.name).symlink_to(path)
    assert resolve_data_dir(tmp_path / "other", download=False) == tmp_path / "other"


def test_missing_data_offline_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="MNIST_DATA_DIR"):
        load_mnist(tmp_path / "empty", download=False)
