"""A user's own data: ImageFolder trees of JPEGs and .npz arrays, named in the config."""

import numpy as np
import pytest
import torch
from PIL import Image

from sircil.config_io import ConfigError
from sircil.config_sections import DataConfig
from sircil.data.datasets import DatasetError, load_dataset, resolve_spec
from sircil.trainer import run_experiment

from conftest import class_templates, make_config, noisy_samples


def write_tree(root, classes=("zebra", "apple", "mango"), per_class=(4, 2), size=(20, 30)):
    """train/ and val/ with per_class JPEGs per class; each class a distinct flat colour."""
    for split, count in zip(("train", "val"), per_class):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = np.full((*size, 3), (40 + 80 * k) % 256, dtype=np.uint8)
                image[..., 0] = 10 * i
                Image.fromarray(image).save(folder / f"img{i}.jpg", quality=95)
    return root


def test_imagefolder_classes_in_sorted_order_and_splits(tmp_path):
    root = write_tree(tmp_path / "tree")
    cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=16)
    spec = resolve_spec(cfg)
    assert (spec.num_classes, spec.channels, spec.image_size) == (3, 3, 16)
    ds = load_dataset(cfg)
    assert ds.class_names == ["apple", "mango", "zebra"]
    assert ds.train.images.shape == (12, 3, 16, 16) and ds.test.images.shape == (6, 3, 16, 16)
    assert torch.bincount(ds.train.labels).tolist() == [4, 4, 4]
    # written in the order zebra, apple, mango with green 40, 120, 200: sorted, apple comes first
    green = [float(ds.train.images[ds.train.labels == k, 1].float().mean()) for k in range(3)]
    assert green == pytest.approx([120, 200, 40], abs=4)
    limited = load_dataset(DataConfig(dataset="imagefolder", root=str(root), image_size=16, train_per_class=2))
    assert limited.train.images.shape[0] == 6


def test_imagefolder_errors_name_the_folder_or_file(tmp_path):
    root = write_tree(tmp_path / "tree")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    with pytest.raises(DatasetError, match="train/empty holds no image file"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(root), image_size=16))
    (root / "train" / "empty").rmdir()
    (root / "val" / "empty").rmdir()
    (root / "train" / "apple" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot decode .*apple/broken.jpg"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(root), image_size=16))
    with pytest.raises(ConfigError, match="data.image_size"):
        make_config({"data": {"dataset": "imagefolder", "root": str(root)}})
    (tmp_path / "lonely" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no val/ or test/ folder"):
        resolve_spec(DataConfig(dataset="imagefolder", root=str(tmp_path / "lonely"), image_size=8))


def write_npz(path, channels_last=True, dtype=np.uint8):
    templates = class_templates(4, 3, 16, 0)
    x_train, y_train = noisy_samples(templates, 60, 1)
    x_test, y_test = noisy_samples(templates, 10, 2)
    if channels_last:
        x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    np.savez(path, x_train=x_train.astype(dtype), y_train=y_train, x_test=x_test.astype(dtype), y_test=y_test,
             class_names=np.array(["a", "b", "c", "d"]))
    return path


def test_numpy_arrays_in_either_layout(tmp_path):
    last = load_dataset(DataConfig(dataset="numpy", root=str(write_npz(tmp_path / "last.npz"))))
    first = load_dataset(DataConfig(dataset="numpy", root=str(write_npz(tmp_path / "first.npz", channels_last=False))))
    assert last.train.images.shape == first.train.images.shape == (240, 3, 16, 16)
    assert torch.equal(last.train.images, first.train.images) and last.class_names == ["a", "b", "c", "d"]
    with pytest.raises(DatasetError, match="dtype float32, expected uint8"):
        resolve_spec(DataConfig(dataset="numpy", root=str(write_npz(tmp_path / "f.npz", dtype=np.float32))))
    with pytest.raises(DatasetError, match="is not a file"):
        resolve_spec(DataConfig(dataset="numpy", root=str(tmp_path / "missing.npz")))


@pytest.mark.slow
def test_a_run_on_numpy_arrays_end_to_end(tmp_path):
    raw = {
        "method": {"name": "finetune"},
        "data": {"dataset": "numpy", "root": str(write_npz(tmp_path / "d.npz"))},
        "scenario": {"base_classes": 2, "steps": 1},
        "memory": {"per_class": 5},
        "train": {"epochs": 8, "batch_size": 16, "lr": 0.05, "device": "cpu", "threads": 1},
    }
    metrics = run_experiment(make_config(raw), tmp_path / "run")
    assert metrics["finished"] and len(metrics["per_step"]) == 2
    assert metrics["per_step"][0]["accuracy"] > 60.0


def test_imagenet_subset_picks_its_100_classes_and_names_missing_ones(tmp_path):
    from sircil.data.imagenet_subsets import IMAGENET_SUBSETS

    wnids = IMAGENET_SUBSETS["podnet"]
    write_tree(tmp_path / "imagenet", classes=(*wnids, "n99999999"), per_class=(1, 1), size=(12, 12))
    cfg = DataConfig(dataset="imagenet_subset", subset="podnet", root=str(tmp_path / "imagenet"), image_size=8)
    ds = load_dataset(cfg)
    assert ds.class_names == sorted(wnids) and ds.train.images.shape == (100, 3, 8, 8)
    with pytest.raises(DatasetError, match=r"imagenet_subset \(ucir\): 91 of its 100 classes have no folder"):
        load_dataset(DataConfig(dataset="imagenet_subset", root=str(tmp_path / "imagenet"), image_size=8))
    with pytest.raises(ConfigError, match="data.subset must be one of"):
        make_config({"data": {"dataset": "imagenet_subset", "subset": "mine", "image_size": 8}})
    with pytest.raises(ConfigError, match="data.subset names an ImageNet subset"):
        make_config({"data": {"dataset": "fashion_mnist", "subset": "ucir"}})
