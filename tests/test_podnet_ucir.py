"""PODNet and UCIR building blocks against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from sircil.methods.podnet import nca_loss, pod_flat_loss, pod_spatial_loss
from sircil.methods.ucir import less_forget_loss, margin_ranking_loss
from sircil.models.cosine import CosineClassifier, kmeans


def test_pod_losses_are_zero_for_equal_features():
    maps = [torch.randn(3, 4, 5, 5), torch.randn(3, 8, 2, 2)]
    assert pod_spatial_loss(maps, [m.clone() for m in maps]) == pytest.approx(0.0, abs=1e-6)
    f = torch.randn(3, 6)
    assert pod_flat_loss(f, f.clone()) == pytest.approx(0.0, abs=1e-6)


def test_pod_spatial_on_a_hand_case():
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 0, 0] = 1.0  # squared: one 1 at (h=0, w=0)
    b = torch.zeros(1, 1, 2, 2)
    b[0, 0, 1, 1] = 1.0
    # width pooling (sum over W) -> per-row sums; height pooling -> per-column sums
    pa = torch.tensor([1.0, 0.0, 1.0, 0.0]) / math.sqrt(2)
    pb = torch.tensor([0.0, 1.0, 0.0, 1.0]) / math.sqrt(2)
    assert pod_spatial_loss([a], [b]) == pytest.approx((pa - pb).norm().item(), rel=1e-6)


def test_pod_flat_is_one_minus_cosine():
    assert pod_flat_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])) == pytest.approx(1.0)


def test_nca_excludes_the_positive_and_applies_the_margin_to_the_target_only():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    y = torch.tensor([0])
    expected = math.log(math.exp(1.0) + math.exp(0.0)) - (2.0 - 0.5)
    assert nca_loss(logits, y, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_lsc_with_proxies_merges_by_softmax():
    head = CosineClassifier(2, proxies=2, similarity="neg_squared_distance")
    head.expand(1)
    with torch.no_grad():
        head.weights[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0]])
    s = torch.tensor([0.0, -2.0])  # 2 cos - 2 for the two proxies
    expected = (torch.softmax(s, 0) * s).sum()
    assert head(x).shape == (1, 1) and head(x)[0, 0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_imprinting_scales_to_the_old_weight_norm():
    head = CosineClassifier(3)
    head.expand(2)
    with torch.no_grad():
        head.weights[0].copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 5.0, 0.0]]))
    head.expand(1)
    head.imprint([torch.tensor([[0.0, 0.0, 2.0]])])
    assert torch.allclose(head.weights[1], torch.tensor([[0.0, 0.0, 4.0]]))
    cos = head(torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(cos, torch.tensor([[0.0, 0.0, 1.0]]))


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g) * 0.05 + c for c in (torch.tensor([0.0, 5.0]), torch.tensor([5.0, 0.0]))])
    centres = kmeans(x, 2, torch.Generator().manual_seed(1))
    assert sorted(centres.round().tolist()) == [[0.0, 5.0], [5.0, 0.0]]
    assert kmeans(x[:3], 10, g).shape == (10, 2)


def test_less_forget_and_margin_ranking():
    f = torch.tensor([[1.0, 0.0]])
    assert less_forget_loss(f, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(1 - 1 / math.sqrt(2))
    cos = torch.tensor([[0.9, 0.1, 0.8, 0.3], [0.2, 0.1, 0.9, 0.8]])
    y = torch.tensor([0, 3])  # 2 old classes: only the first sample (old) counts
    # sample 0: target 0.9, hardest new 0.8 and 0.3 -> hinge (0.5 - 0.9 + 0.8) + (0.5 - 0.9 + 0.3) clamped = 0.4 + 0
    assert margin_ranking_loss(cos, y, 2, 2, 0.5).item() == pytest.approx(0.4 / 2, rel=1e-5)
    assert margin_ranking_loss(cos, torch.tensor([2, 3]), 2, 2, 0.5).item() == 0.0


# --- end to end on real Fashion-MNIST ---------------------------------------------------

SIR = {"enabled": True, "fc": 1.0, "ca": 0.9, "it": 0.5}


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    """PODNet and SIR_P share their base step (SIR is a no-op on the balanced base step), as in a sweep."""
    return tmp_path_factory.mktemp("base_cache")


@pytest.mark.parametrize(
    "method, sir",
    [("podnet", None), ("podnet", SIR), ("ucir", None)],
    ids=["podnet", "sir_p", "ucir"],
)
def test_end_to_end_beats_chance_every_step(fashion_root, tmp_path, base_cache, method, sir):
    from sircil.trainer import run_experiment

    from conftest import fashion_config, make_config
    from test_end_to_end import assert_beats_chance

    options = {"name": method, **({"finetune_epochs": 4} if method == "podnet" else {})}
    model = {"last_relu": False, "block_relu": method != "podnet", "zero_init_residual": method == "podnet"}
    raw = fashion_config(method=options, model=model, data={"order_seed": None}, train={"lr": 0.1, "epochs": 5, "base_epochs": 10})
    if sir:
        raw["sir"] = sir
    raw["cache_dir"] = str(base_cache)
    metrics = run_experiment(make_config(raw), tmp_path / "run")
    assert_beats_chance(metrics)
    assert_beats_chance(metrics, "accuracy_nme")
    if sir:
        assert (tmp_path / "run" / "sir_similarity.pt").is_file()
