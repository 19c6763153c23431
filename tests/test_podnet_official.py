"""PODNet against its official code on one fixed batch, end to end: the ReLU-free ResNet, the LSC
on the stable cosine distance with its softmax proxy merge, the learned scale, the NCA loss, the
gradient of every parameter after the official clamp hooks, and the optimizer's groups.

Official source: github:arthurdouillard/incremental_learning.pytorch @ c09fc54 —
inclearn/lib/network/classifiers.py ``CosineClassifier.forward`` / ``_reduce_proxies``,
inclearn/lib/distance.py ``stable_cosine_distance``, inclearn/lib/network/postprocessors.py
``FactorScalar``, inclearn/lib/losses/base.py ``nca``, inclearn/models/podnet.py
``_train_task`` (clamp hooks), ``_before_task`` (groupwise_factors) and ``_compute_loss``.
The re-statements below are written from those functions; none calls sircil's own code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import fashion_config, make_config
from sircil.data.datasets import DatasetSpec
from sircil.methods import Step, method_class
from sircil.training.phase import main_phase
from test_reference import official_attention_maps, official_nca


def official_lsc(features: torch.Tensor, weights: torch.Tensor, proxies: int, gamma: float = 1.0) -> torch.Tensor:
    """``CosineClassifier.forward`` with ``distance="neg_stable_cosine_distance"``, scaling 1:
    the pairwise squared distances of the stacked normalized rows (clamped at 0, exact zeros kept
    at 0), negated; then ``_reduce_proxies`` with ``merging="softmax"``."""
    a = features / features.norm(dim=1, keepdim=True)
    b = weights / weights.norm(dim=1, keepdim=True)
    mat = torch.cat([a, b])
    sq = mat.pow(2).sum(dim=1, keepdim=True)
    dist = (sq.expand(mat.size(0), -1) + sq.t().expand(mat.size(0), -1) - 2 * (mat @ mat.t())).clamp(min=0.0)
    dist = dist * (dist > 0).to(dist.dtype)
    raw = -dist[: a.shape[0], a.shape[0]:]
    per_class = raw.view(features.shape[0], -1, proxies)
    return (per_class * torch.softmax(gamma * per_class, dim=-1)).sum(-1)


def podnet_method(**method_options):
    spec = DatasetSpec("tiny", 4, 1, 16, None, None, False, (), "")
    raw = fashion_config(
        method={"name": "podnet", **method_options},
        model={"backbone": "resnet32", "last_relu": False, "block_relu": False, "zero_init_residual": True, "shortcut": "A"},
        train={"grad_clip_value": 5.0, "lr": 0.1, "weight_decay": 5e-4, "channels_last": False},
    )
    torch.manual_seed(3)
    method = method_class("podnet")(make_config(raw), spec)
    method.expand(Step(0, 0, 2))
    # gamma 0 makes every residual branch 0 at init; random affines give every parameter a gradient
    for m in method.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.2)
    with torch.no_grad():
        method.model.scale.fill_(1.7)
    return method.__class__, method


def test_one_batch_forward_loss_and_every_gradient_match_the_official_code():
    cls, method = podnet_method()
    model = method.model.double().train()
    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0])
    step = Step(0, 0, 2)

    ours = method.losses(method.forward(x, step), y, step)
    assert set(ours) == {"nca"}
    names = [n for n, p in model.named_parameters()]
    g_ours = torch.autograd.grad(ours["nca"], list(model.parameters()))

    features, _ = official_attention_maps(model.backbone, x)  # raw_features (classifier_no_act)
    similarities = official_lsc(features, torch.cat(list(model.head.weights)), proxies=10)
    # podnet.py _compute_loss: nca(logits, targets, scale=post_processor.factor, margin=0.6), the
    # margin subtracted from every class (base.py line 74), so it cancels
    ref = official_nca(similarities, y, model.scale, 0.6, per_target=False)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))

    assert ours["nca"].item() == pytest.approx(ref.item(), rel=1e-10)
    for name, a, b in zip(names, g_ours, g_ref):
        # the official hooks clamp every gradient to [-5, 5]; sircil clips values at 5 after backward
        assert torch.allclose(a.clamp(-5, 5), b.clamp(-5, 5), rtol=1e-8, atol=1e-12), name
    assert sum(int((g.abs() > 0).any()) for g in g_ref) == len(g_ref)  # every parameter is exercised


def test_learned_scale_trains_with_the_network_and_old_proxies_do_not():
    """``_before_task`` with ``groupwise_factors: {old_weights: 0}``: convnet, postprocessing (the
    scale) and new_weights at lr 0.1 with the optimizer's weight decay; old weights left out."""
    cls, method = podnet_method()
    method.expand(Step(1, 2, 3))
    groups = method.param_groups(Step(1, 2, 3))
    trained = {id(p) for g in groups for p in g["params"]}
    model = method.model
    assert id(model.scale) in trained and id(model.head.weights[-1]) in trained
    assert id(model.head.weights[0]) not in trained
    assert trained == {id(p) for p in model.parameters()} - {id(model.head.weights[0])}
    phase = main_phase(method.cfg.train, Step(1, 2, 3), "train", torch.arange(3), lambda x, y: ({}, x), groups)
    assert (phase.lr, phase.weight_decay, phase.momentum, phase.grad_clip_value) == (0.1, 5e-4, 0.9, 5.0)
