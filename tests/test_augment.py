import torch

from sircil.config_sections import DataConfig
from sircil.data.augment import BatchAugment, Normalizer, random_crop, random_flip
from sircil.data.datasets import dataset_spec


def test_crop_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6)
    fill = torch.full((1, 1, 1, 1), -1.0)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, fill, gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    for n in range(2):
        windows = [padded[n, :, i: i + 6, j: j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)


def test_crops_cover_all_offsets_and_stay_inside():
    x = torch.ones(4000, 1, 4, 4)
    out = random_crop(x, 1, torch.zeros(1, 1, 1, 1), torch.Generator().manual_seed(0))
    # a crop keeps between 9 and 16 of the 16 ones: never more (inside the padded image)
    kept = out.sum((1, 2, 3))
    assert kept.min() == 9 and kept.max() == 16
    assert len(torch.unique(kept)) == 3  # 9, 12, 16 ones: offsets (corner, edge, centre)


def test_flip_is_an_exact_mirror():
    x = torch.randn(500, 2, 3, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((mirrored | same).all()) and 150 < int(mirrored.sum()) < 350


def test_augmentation_follows_the_seed():
    spec = dataset_spec("fashion_mnist")
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    aug = BatchAugment(DataConfig(brightness=0.3), spec, Normalizer.from_config(DataConfig(), spec, images))
    a = aug(images, torch.Generator().manual_seed(3))
    b = aug(images, torch.Generator().manual_seed(3))
    c = aug(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalizations():
    spec = dataset_spec("fashion_mnist")
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    pix = Normalizer.from_config(DataConfig(normalize="pixel_mean"), spec, images)
    assert torch.allclose(pix(images).mean(0), torch.zeros(1, 28, 28), atol=1e-5)
    ms = Normalizer.from_config(DataConfig(), spec, images)
    zero = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    assert torch.allclose(ms(zero), ms.fill.expand(1, 1, 28, 28))


def test_random_resized_crop_takes_windows_of_the_image():
    from sircil.data.augment import random_resized_crop

    # a horizontal ramp: any crop, resized, is still increasing left to right and stays in range
    x = torch.linspace(0, 1, 64).expand(200, 1, 64, 64).contiguous()
    out = random_resized_crop(x, 32, torch.Generator().manual_seed(0))
    assert out.shape == (200, 1, 32, 32)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert bool((out[:, :, :, 1:] >= out[:, :, :, :-1] - 1e-6).all())
    spans = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert float(spans.min()) < 0.35 < 0.8 < float(spans.max())  # small and large crops both drawn
    # the whole image at aspect 1 is a plain resize
    full = random_resized_crop(x[:2], 64, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(full, x[:2], atol=1e-5)
    again = random_resized_crop(x, 32, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_evaluation_sees_the_center_crop():
    spec = dataset_spec("fashion_mnist")
    images = torch.arange(28 * 28, dtype=torch.float).view(1, 1, 28, 28).to(torch.uint8)
    norm = Normalizer.from_config(DataConfig(crop="resized", crop_size=20), spec, images)
    assert torch.equal(norm.eval_view(images), norm(images[..., 4:24, 4:24]))


def test_a_shard_gets_exactly_its_samples_of_the_whole_batch_augmentation():
    """Data-parallel ranks augment only their every world-th sample, yet each sample is
    augmented as it would be in one process."""
    spec = dataset_spec("fashion_mnist")
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    for data in (DataConfig(brightness=0.3), DataConfig(crop="resized", crop_size=20)):
        aug = BatchAugment(data, spec, Normalizer.from_config(data, spec, images))
        whole = aug(images, torch.Generator().manual_seed(5))
        for rank in range(3):
            part = aug(images[rank::3], torch.Generator().manual_seed(5), (rank, 3))
            assert torch.equal(part, whole[rank::3])
