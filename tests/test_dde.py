"""DDE on UCIR: neighbours, colliding-effect loss, momentum embedding and its removal at inference,
against hand values and re-statements of the official lines, and a tiny real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sircil.data.datasets import dataset_spec
from sircil.methods import Step, method_class
from sircil.methods.dde import colliding_effect_loss, nearest_new_neighbours, remove_momentum_effect
from sircil.runfolder import RunFolder
from sircil.trainer import run_experiment

from conftest import fashion_config, make_config


def test_neighbours_are_the_nearest_new_class_samples_other_than_itself():
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    is_new = torch.tensor([False, True, True, False, True])
    got = nearest_new_neighbours(features, is_new, k=2, chunk=2)  # chunks must not change the answer
    assert got.tolist() == [[1, 2], [2, 4], [1, 4], [2, 1], [2, 1]]


def test_colliding_effect_is_the_official_joint_nll():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    neighbours = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # K = 2 per sample
    y = torch.tensor([0, 2])

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    # official: outputs_joint = (mu_1 * softmax(outputs) + mu_2 * mean_k softmax(match)) / (mu_1 + mu_2), mu = 1
    p = softmax(logits.numpy())
    q = softmax(neighbours.numpy()).reshape(2, 2, 3).mean(1)
    joint = (p + q) / 2
    expected = -np.log(joint[[0, 1], [0, 2]]).mean()
    torch.testing.assert_close(colliding_effect_loss(logits, neighbours, y), torch.tensor(expected, dtype=torch.float32))


def test_momentum_effect_removal_is_the_official_tde():
    rng = np.random.default_rng(0)
    features, weights, effect = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=4) * 7
    sigma = 4.0
    w = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    logits = sigma * (features / np.linalg.norm(features, axis=1, keepdims=True)) @ w.T
    # official (compute_accuracy_TDE, e normalized by the caller):
    e = effect / np.linalg.norm(effect)
    cos_val = (features * e).sum(1, keepdims=True) / np.linalg.norm(features, axis=1, keepdims=True)
    expected = logits - 0.5 * cos_val * (e @ w.T)[None, :] * sigma
    got = remove_momentum_effect(torch.tensor(logits), torch.tensor(features), torch.tensor(weights), torch.tensor(sigma), torch.tensor(effect), 0.5)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_training_forward_splits_the_neighbours_off_and_accumulates_the_effect():
    cfg = make_config(fashion_config(method={"name": "dde", "top_k": 2}))
    method = method_class("dde")(cfg, dataset_spec("fashion_mnist"))
    for index in range(2):
        method.expand(Step(index, 2 * index, 2 * index + 2))
    method.old_model = method_class("dde")(cfg, dataset_spec("fashion_mnist")).model
    method.old_model.head.expand(2)
    method.neighbours = torch.zeros(10, 2, dtype=torch.long)
    method.effect = torch.ones(method.feature_dim)
    method.model.train()
    x = torch.rand(3 * 3, 1, 28, 28)  # a batch of 3 and its 3 x 2 neighbours
    out = method.forward(x, Step(1, 2, 4))
    assert out["logits"].shape == (3, 4) and out["neighbour_logits"].shape == (6, 4)
    torch.testing.assert_close(method.effect, 0.9 + out["features"].detach().mean(0))
    terms = method.losses(out, torch.tensor([0, 2, 3]), Step(1, 2, 4))
    assert set(terms) == {"colliding", "less_forget", "margin_ranking"}


@pytest.mark.slow
def test_dde_end_to_end(fashion_root, tmp_path):
    raw = fashion_config(
        method={"name": "dde", "top_k": 3}, data={"train_per_class": 40, "test_per_class": 20}, scenario={"base_classes": 6, "steps": 2},
        memory={"per_class": 5}, train={"epochs": 2, "batch_size": 16, "threads": 1},
    )
    metrics = run_experiment(make_config(raw), tmp_path / "run")
    assert metrics["finished"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("DDE: 3 nearest new-class neighbours of each of") == 2
    assert "colliding" in log and "less_forget" in log
    state = torch.load(RunFolder(tmp_path / "run").checkpoint_path(2), weights_only=False)["method_state"]
    assert state["effect"] is not None and float(state["effect"].norm()) > 0
