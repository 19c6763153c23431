"""SIR: each term against hand computations, and end to end on real Fashion-MNIST."""

import math

import pytest
import torch

from sircil.config_sections import SIRConfig
from sircil.data.augment import Normalizer
from sircil.methods import method_class
from sircil.data.datasets import load_dataset
from sircil.data.scenario import apply_class_order, resolve_class_order
from sircil.evaluate import infer
from sircil.plugins.sir import SIR, attenuation_weights, class_gaussians, frequency_margins, wasserstein_similarity
from sircil.trainer import run_experiment

from conftest import fashion_config, make_config, stable


def test_fc_margins_from_counts():
    b = frequency_margins(torch.tensor([20, 5, 500, 500]))
    assert torch.allclose(b, torch.tensor([math.log(20 / 500), math.log(5 / 500), 0.0, 0.0]))
    assert frequency_margins(torch.tensor([0, 10, 10]))[0] == 0  # a class absent from the step gets no margin


def test_ca_decays_with_age_and_gamma_one_is_off():
    ages = torch.tensor([3, 2, 1, 0])
    assert torch.allclose(attenuation_weights(ages, 0.5), torch.tensor([0.25, 0.5, 1.0, 1.0]))
    assert torch.equal(attenuation_weights(ages, 1.0), torch.ones(4))


def _sir(fc=1.0, ca=1.0, it=0.0, features=None):
    sir = SIR(SIRConfig(enabled=True, fc=fc, ca=ca, it=it))
    labels = torch.tensor([0] * 2 + [1] * 4 + [2] * 10 + [3] * 10)  # 2 old classes (memory), 2 new
    class_steps = torch.tensor([0, 1, 2, 2])
    feats = features if features is not None else torch.randn(labels.numel(), 5, generator=torch.Generator().manual_seed(0))
    sir.begin_step(2, 2, 4, labels, class_steps, lambda: feats)
    return sir, labels


def test_offsets_combine_fc_and_ca():
    sir, _ = _sir(fc=2.0, ca=0.5)
    # class 0: age 2 -> w 0.5; class 1: age 1 -> w 1; new classes: margin 0
    expected = torch.tensor([2.0 * 0.5 * math.log(2 / 10), 2.0 * math.log(4 / 10), 0.0, 0.0])
    assert torch.allclose(sir.offset, expected)
    plain, _ = _sir(fc=2.0, ca=1.0)
    assert torch.allclose(plain.offset, 2.0 * frequency_margins(torch.tensor([2, 4, 10, 10])))


def test_identical_gaussians_have_similarity_one():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(3, 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    feats = torch.cat([feats[:2], feats[:2], torch.tensor([[5.0, 5.0], [6.0, 4.0]])])
    mean, std = class_gaussians(feats, labels, 3)
    cross = torch.tensor([[False, True, True], [True, False, False], [True, False, False]])
    sim = wasserstein_similarity(mean, std, cross)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] < 1e-3
    d02 = (mean[0] - mean[2]).pow(2).sum() + (std[0] - std[2]).pow(2).sum()
    median = torch.stack([torch.tensor(0.0), d02, torch.tensor(0.0), d02]).median()
    assert sim[0, 2] == pytest.approx(math.exp(-(d02 / median).item()), rel=1e-4)


def test_it_margins_only_across_the_old_new_boundary_never_on_the_target():
    sir, labels = _sir(fc=0.0, it=0.5)
    logits = torch.zeros(4, 4)
    y = torch.tensor([0, 1, 2, 3])
    z = sir.adjust(logits, y)
    for row, target in enumerate(y.tolist()):
        for j in range(4):
            across = (target < 2) != (j < 2)
            if across:
                assert z[row, j] > 0 and z[row, j] <= 0.5 + 1e-6
            else:
                assert z[row, j] == 0
    scaled = sir.adjust(logits, y, scale=10.0)
    assert torch.allclose(scaled, 10.0 * z)


def test_fc_lowers_old_logits_in_training_only():
    sir, _ = _sir(fc=1.0)
    z = sir.adjust(torch.zeros(1, 4), torch.tensor([3]))
    assert (z[0, :2] < 0).all() and (z[0, 2:] == 0).all()


# --- end to end on real Fashion-MNIST ---------------------------------------------------

def mini(**sections):
    base = {
        "data": {"order_seed": None, "train_per_class": 100, "test_per_class": 50},
        "scenario": {"base_classes": 4, "steps": 3},
        "memory": {"per_class": 1},
        "train": {"epochs": 3},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return fashion_config(**base)


@pytest.fixture(scope="module")
def runs(fashion_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("sir")
    cache = str(root / "cache")
    configs = {
        "plain": mini(),
        "sir_off": mini(sir={"enabled": False, "fc": 0.3, "it": 0.7}),
        "fc": mini(sir={"enabled": True, "fc": 1.0, "ca": 1.0, "it": 0.0}),
        "warm_cache": dict(mini(memory={"per_class": 5}), cache_dir=cache),
        "fc_cached": dict(mini(sir={"enabled": True, "fc": 1.0, "ca": 1.0, "it": 0.0}), cache_dir=cache),
    }
    return {name: (run_experiment(make_config(raw), root / name), root / name) for name, raw in configs.items()}


@pytest.mark.slow
def test_sir_switched_off_is_bit_identical(runs):
    off, plain = stable(runs["sir_off"][0]), stable(runs["plain"][0])
    # the files differ (sir.fc, sir.it) but a switched-off plug-in's options are not in the hash
    assert off == plain


@pytest.mark.slow
def test_fc_reduces_the_old_new_logit_bias_at_m1(runs):
    plain, fc = runs["plain"][0], runs["fc"][0]
    bias_plain = [r["logit_bias_old_minus_new"] for r in plain["per_step"][1:]]
    bias_fc = [r["logit_bias_old_minus_new"] for r in fc["per_step"][1:]]
    assert all(b < 0 for b in bias_plain), bias_plain  # the recency bias SIR targets
    assert sum(abs(b) for b in bias_fc) < sum(abs(b) for b in bias_plain), (bias_fc, bias_plain)
    assert "with SIR's training adjustment" in (runs["fc"][1] / "log.txt").read_text()


@pytest.mark.slow
def test_base_step_cache_is_shared_and_exact(runs):
    warm, cached, uncached = runs["warm_cache"][0], runs["fc_cached"][0], runs["fc"][0]
    assert not warm["base_step_cached"] and cached["base_step_cached"] and not uncached["base_step_cached"]
    a, b = stable(cached), stable(uncached)
    a.pop("config_hash"), b.pop("config_hash"), a.pop("base_step_cached"), b.pop("base_step_cached")
    assert a == b  # SIR on a balanced base step is a no-op, so the shared base step is exact


@pytest.mark.slow
def test_inference_uses_raw_logits(runs):
    metrics, folder = runs["fc"]
    cfg = make_config(mini(sir={"enabled": True, "fc": 1.0, "ca": 1.0, "it": 0.0}))
    state = torch.load(folder / "checkpoints" / "step_003.pt", weights_only=False)
    ds = load_dataset(cfg.data)
    ds = apply_class_order(ds, resolve_class_order(cfg.data, 10))
    method = method_class("finetune")(cfg, ds.spec)
    method.model.head.expand(10)
    method.load_state_dict(state["method_state"])
    method.model.eval()
    out = infer(method.eval_logits, ds.test.images, 256, Normalizer.from_config(cfg.data, ds.spec, ds.train.images), False)
    raw_accuracy = 100.0 * (out["logits"].argmax(1) == ds.test.labels).float().mean().item()
    assert raw_accuracy == pytest.approx(metrics["last_accuracy"], abs=1e-3)


@pytest.mark.slow
def test_full_sir_with_it_writes_similarity_and_pairs(fashion_root, tmp_path):
    raw = mini(sir={"enabled": True, "fc": 1.0, "ca": 0.8, "it": 0.5}, method={"name": "icarl"}, train={"epochs": 1})
    metrics = run_experiment(make_config(raw), tmp_path / "it")
    saved = torch.load(tmp_path / "it" / "sir_similarity.pt", weights_only=False)
    assert sorted(saved) == [1, 2, 3]
    sim = saved[3]["similarity"]
    assert sim.shape == (10, 10) and torch.allclose(sim.diagonal(), torch.ones(10))
    assert len(saved[3]["class_names"]) == 10
    assert "most similar old/new pairs" in (tmp_path / "it" / "log.txt").read_text()
    assert all("logit_bias_old_minus_new" in r for r in metrics["per_step"][1:])


def test_enabled_alone_is_the_whole_method():
    from sircil.config import config_from_dict

    sir = config_from_dict({"sir": {"enabled": True}}).sir
    assert sir.fc > 0 and sir.ca < 1 and sir.it > 0  # FC, CA and IT all on
    assert sir.cosine_scale is not None and sir.sigmoid == "weight"  # the head rules the screen and the grid chose
