import gzip
import pickle

import pytest
import torch

from sircil.config_sections import DataConfig
from sircil.data.datasets import DatasetError, first_per_class, load_dataset, ImageSplit

from conftest import write_cifar100, write_fashion_idx


def test_real_fashion_mnist_loads_with_checksums(fashion_root):
    ds = load_dataset(DataConfig(dataset="fashion_mnist", root=str(fashion_root)))
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    assert ds.class_names[0] == "T-shirt/top"


def test_train_per_class_keeps_the_first_images_in_file_order():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    split = ImageSplit(torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1), labels)
    kept = first_per_class(split, 2, 3)
    assert kept.images.flatten().tolist() == [0, 1, 2, 3, 4, 6]
    assert kept.labels.tolist() == [0, 1, 0, 2, 1, 2]


def test_fashion_idx_plain_and_gzipped(tmp_path, monkeypatch):
    for compress in (True, False):
        root = write_fashion_idx(tmp_path / str(compress), monkeypatch, compress=compress)
        ds = load_dataset(DataConfig(dataset="fashion_mnist", root=str(root), test_per_class=1))
        assert ds.train.images.shape == (50, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)


def test_fashion_missing_file_names_it_and_the_package(tmp_path, monkeypatch):
    root = write_fashion_idx(tmp_path, monkeypatch)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(root)))
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "dataset-fashion-mnist" in str(err.value)


def test_fashion_corrupt_file_fails_its_checksum(tmp_path, monkeypatch):
    root = write_fashion_idx(tmp_path, monkeypatch)
    path = root / "train-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DatasetError, match="checksum mismatch for .*train-images-idx3-ubyte"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(root)))


def test_fashion_truncated_gzip_is_reported(tmp_path, monkeypatch):
    root = write_fashion_idx(tmp_path, monkeypatch)
    path = root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(root)))


def test_cifar100_format_loads(tmp_path, monkeypatch):
    write_cifar100(tmp_path, monkeypatch)
    ds = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    assert ds.train.images.shape == (600, 3, 32, 32) and ds.test.images.shape == (300, 3, 32, 32)
    assert ds.class_names[7] == "class07"
    same = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path / "cifar-100-python")))
    assert torch.equal(same.train.images, ds.train.images)


def test_cifar100_root_from_environment(tmp_path, monkeypatch):
    write_cifar100(tmp_path, monkeypatch)
    monkeypatch.setenv("SIRCIL_DATA", str(tmp_path))
    assert load_dataset(DataConfig(dataset="cifar100")).train.labels.numel() == 600


def test_cifar100_checksum_mismatch_says_where_to_get_it(tmp_path, monkeypatch):
    folder = write_cifar100(tmp_path, monkeypatch)
    (folder / "test").write_bytes((folder / "test").read_bytes() + b"junk")
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    message = str(err.value)
    assert "checksum mismatch" in message and str(folder / "test") in message and "cifar-100-python" in message


def test_cifar100_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="missing file .*cifar-100-python.*train"):
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))


def test_cifar100_wrong_shape_is_reported(tmp_path, monkeypatch):
    folder = write_cifar100(tmp_path, monkeypatch)
    entry = pickle.loads((folder / "train").read_bytes())
    entry["data"] = entry["data"][:, :1000]
    (folder / "train").write_bytes(pickle.dumps(entry))
    monkeypatch.setitem(__import__("sircil.data.readers", fromlist=["x"]).CIFAR100_MD5, "train", __import__("hashlib").md5((folder / "train").read_bytes()).hexdigest())
    with pytest.raises(DatasetError, match="expected N x 3072"):
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
