"""Every method's losses pinned to the OFFICIAL code on fixed small batches.

Expected values come either from hand arithmetic (literal numbers, the arithmetic in a
comment) or from a small re-statement of the official function written here in plain
numpy / python loops (or, for autograd, in torch written line by line as the official
code is). None of them calls sircil's own loss. Official sources, as fetched:

- iCaRL   github:srebuffi/iCaRL, iCaRL-TheanoLasagne/main_cifar_100_theano.py (loss lines 65-67,
          distillation targets lines 153-163), utils_cifar100.py ``build_cnn`` (100 sigmoid outputs)
- UCIR    github:hshustc/CVPR19_Incremental_Learning, utils_incremental/incremental_train_and_eval_MR_LF.py
          ``incremental_train_and_eval_MR_LF`` (lines 92-125), cifar100-class-incremental/
          class_incremental_cosine_cifar100.py (``cur_lamda``, lines 191-211), modified_linear.py
- PODNet  github:arthurdouillard/incremental_learning.pytorch @ c09fc54, inclearn/lib/losses/base.py
          ``nca`` and ``embeddings_similarity``, inclearn/lib/losses/distillation.py ``pod``,
          inclearn/models/podnet.py ``_compute_loss``, inclearn/convnet/my_resnet.py ``CifarResNet``
- DER     github:Rhyssiyan/DER-ClassIL.pytorch @ dd4af61, inclearn/models/incmodel.py ``_compute_loss``,
          inclearn/convnet/network.py ``_add_classes_multi_fc``
- WA      github:G-U-N/PyCIL @ 716625e (the authors released none), models/wa.py ``_update_representation``
          and ``_KD_loss``, utils/inc_net.py ``IncrementalNet.weight_align``
- BiC     github:wuyuebupt/LargeScaleIncrementalLearning, resnet.py ``resnet_model_fn`` (distillation
          from the bias-corrected old model, the bias layer and its loss)
- SS-IL   github:hongjoon0805/SS-IL-Official, trainer/ssil.py ``Trainer.train``
- DDE     github:JoyHuYY1412/DDE_CIL, utils_incremental/incremental_train_and_eval_DCE_MR_LF_TDE.py (loss1),
          utils_incremental/compute_accuracy_TDE.py ``compute_accuracy_TDE``
- SIR     ../shared/docs/SIR_METHOD.md (no official code exists)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from sircil.config_sections import SIRConfig
from sircil.data.datasets import dataset_spec
from sircil.methods import Step, method_class
from sircil.methods.base import frozen_copy
from sircil.methods.bic import BiC, BiCConfig, BiasCorrectedNet
from sircil.methods.dde import colliding_effect_loss, remove_momentum_effect
from sircil.methods.der import DERNet, auxiliary_loss, auxiliary_targets
from sircil.methods.finetune import Finetune
from sircil.methods.icarl import ICaRL, icarl_bce_loss, icarl_targets
from sircil.methods.podnet import PODNet, PODNetConfig, nca_loss, pod_flat_loss, pod_spatial_loss
from sircil.methods.ssil import SSIL, SSILConfig, separated_softmax_loss, task_wise_distillation
from sircil.methods.ucir import UCIR, UCIRConfig, less_forget_loss, margin_ranking_loss
from sircil.methods.wa import WA, WAConfig, align_weights
from sircil.models import IncrementalLinear
from sircil.models.resnet import CifarResNet
from sircil.plugins.sir import SIR, SIRPlugin
from sircil.training.context import HeadSpec

from conftest import fashion_config, make_config, step_context


def stub(cls, options=None):
    """A method object with only its options (its ``losses`` read nothing else)."""
    method = cls.__new__(cls)
    method.options = options
    return method


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------------------
# iCaRL
# --------------------------------------------------------------------------------------


def official_icarl_loss(all_logits: np.ndarray, y: np.ndarray, old_probs: np.ndarray | None, num_old: int) -> float:
    """main_cifar_100_theano.py: ``targets = zeros((batch, 100))``, one-hot of the labels; from the
    second batch of classes on, ``targets[:, old] = prediction_old[:, old]`` (the old network's
    sigmoid); ``loss = binary_crossentropy(sigmoid(net), targets).mean()`` over batch x 100."""
    b, t = all_logits.shape
    targets = np.zeros((b, t))
    for i in range(b):
        targets[i, y[i]] = 1.0
    if old_probs is not None:
        for i in range(b):
            for k in range(num_old):
                targets[i, k] = old_probs[i, k]
    total = 0.0
    for i in range(b):
        for k in range(t):
            p = np_sigmoid(all_logits[i, k])
            total += -(targets[i, k] * math.log(p) + (1 - targets[i, k]) * math.log(1 - p))
    return total / (b * t)


def test_icarl_targets_overwrite_every_old_column_with_the_old_sigmoid():
    """main_cifar_100_theano.py lines 153-162: the old columns, the old-class sample's own label
    column included, are the old network's sigmoid; new columns keep the one-hot labels."""
    ln3 = math.log(3.0)
    old_logits = torch.tensor([[0.0, ln3], [-ln3, 0.0], [ln3, -ln3]])  # sigmoids 0.5/0.75, 0.25/0.5, 0.75/0.25
    y = torch.tensor([0, 3, 2])
    expected = torch.tensor(
        [
            [0.50, 0.75, 0.0, 0.0],  # y = 0 is old: its own column is 0.5, not 1
            [0.25, 0.50, 0.0, 1.0],
            [0.75, 0.25, 1.0, 0.0],
        ]
    )
    assert torch.allclose(icarl_targets(y, old_logits, 4), expected, atol=1e-6)
    assert torch.equal(icarl_targets(y, None, 4), torch.eye(4)[y])  # base step: plain one-hot


def test_icarl_bce_is_the_official_mean_without_the_unseen_outputs():
    """main_cifar_100_theano.py line 67 ``loss.mean()`` over batch x 100 outputs. sircil's output
    layer grows, so it has no unseen-class outputs (the official ones are trained towards 0);
    it keeps the official normalization by batch x dataset classes (lr 2.0 is tuned for it):
    ours = official - sum over unseen outputs of BCE(sigmoid(z), 0) / (batch x classes)."""
    rng = np.random.default_rng(0)
    total, seen, num_old, b = 6, 4, 2, 5
    all_logits = rng.normal(0, 2, size=(b, total))
    old_logits = rng.normal(0, 2, size=(b, num_old))
    y = np.array([0, 1, 2, 3, 3])
    official = official_icarl_loss(all_logits, y, np_sigmoid(old_logits), num_old)
    unseen = sum(-math.log(1 - np_sigmoid(all_logits[i, k])) for i in range(b) for k in range(seen, total)) / (b * total)
    ours = icarl_bce_loss(torch.tensor(all_logits[:, :seen]), torch.tensor(y), torch.tensor(old_logits), total)
    assert ours.item() == pytest.approx(official - unseen, rel=1e-6)  # targets are built in float32
    # hand check: every logit 0 gives BCE ln 2 whatever the target: 5 x 4 seen outputs x ln 2 / (5 x 10)
    # = 0.4 ln 2 = 0.2772588722239781 (a mean over the seen outputs only would give ln 2)
    zeros = torch.zeros(b, seen, dtype=torch.float64)
    assert icarl_bce_loss(zeros, torch.tensor(y), torch.zeros(b, num_old), 10).item() == pytest.approx(0.2772588722239781)


def test_icarl_distils_only_the_old_models_old_columns():
    """main_cifar_100_theano.py line 162 copies ``prediction_old[:, old]`` only: sircil's old model
    was copied after expand, so its untrained new-class rows must not become targets."""
    wide = torch.tensor([[1.0, -1.0, 5.0, 5.0]])
    method = stub(ICaRL)
    method.model = lambda x: {"logits": torch.zeros(1, 4)}
    method.old_model = lambda x: {"logits": wide}
    out = method.forward(torch.zeros(1), Step(1, 2, 4))
    assert torch.equal(out["old_logits"], wide[:, :2])


# --------------------------------------------------------------------------------------
# UCIR
# --------------------------------------------------------------------------------------


def official_cosine_embedding_loss(a: np.ndarray, b: np.ndarray) -> float:
    """nn.CosineEmbeddingLoss()(a, b, ones): mean over the batch of 1 - cos(a_i, b_i)."""
    losses = [1 - float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))) for u, v in zip(a, b)]
    return sum(losses) / len(losses)


def official_margin_ranking(cos: np.ndarray, y: np.ndarray, num_old: int, k: int, margin: float) -> float:
    """incremental_train_and_eval_MR_LF.py lines 104-123: for the samples of old classes
    (``hard_index``), the ground-truth cosine repeated K times against the K highest new-class
    cosines, ``nn.MarginRankingLoss(margin)`` with target 1: mean of max(0, margin - gt + neg)
    over the hard_num * K pairs; 0 when the batch holds no old-class sample."""
    pairs = []
    for i in range(len(y)):
        if y[i] < num_old:
            negatives = sorted(cos[i, num_old:], reverse=True)[:k]
            pairs += [max(0.0, margin - cos[i, y[i]] + n) for n in negatives]
    return sum(pairs) / len(pairs) if pairs else 0.0


# 2 old classes, 3 new; K = 2, margin 0.5 (class_incremental_cosine_cifar100.py ``--K 2 --dist 0.5``)
UCIR_COS = np.array(
    [
        [0.9, 0.1, 0.5, 0.2, 0.6],  # y 0 (old): top-2 new 0.6, 0.5 -> 0.5-0.9+0.6 = 0.2, 0.5-0.9+0.5 = 0.1
        [0.3, 0.2, 0.1, 0.8, 0.7],  # y 3 (new): no term
        [0.0, 0.3, -0.2, 0.1, 0.0],  # y 1 (old): top-2 0.1, 0.0 -> 0.3, 0.2
        [0.0, 0.95, 0.1, 0.2, 0.3],  # y 1 (old): top-2 0.3, 0.2 -> -0.15, -0.25, both clipped to 0
    ]
)
UCIR_Y = np.array([0, 3, 1, 1])


def test_ucir_margin_ranking_is_the_mean_over_the_old_samples_hard_pairs():
    """incremental_train_and_eval_MR_LF.py ``incremental_train_and_eval_MR_LF``, loss3, on unscaled
    cosines (``old_scores``/``new_scores`` are hooks on fc1/fc2, before sigma)."""
    cos, y = torch.tensor(UCIR_COS), torch.tensor(UCIR_Y)
    # hand: (0.2 + 0.1 + 0.3 + 0.2 + 0 + 0) / (3 old samples x K 2) = 0.8 / 6; a mean over the
    # batch x K (0.1), over the batch (0.2) or a sum (0.8) would fail
    expected = 0.8 / 6
    assert official_margin_ranking(UCIR_COS, UCIR_Y, 2, 2, 0.5) == pytest.approx(expected)
    assert margin_ranking_loss(cos, y, 2, 2, 0.5).item() == pytest.approx(expected, rel=1e-9)
    # a batch of new-class samples only: the official ``loss3 = zeros(1)``
    assert margin_ranking_loss(cos[[1]], y[[1]], 2, 2, 0.5).item() == 0.0
    # random batches against the loop re-statement
    rng = np.random.default_rng(1)
    for _ in range(5):
        c = rng.uniform(-1, 1, size=(8, 7))
        labels = rng.integers(0, 7, size=8)
        labels[0] = 1  # at least one old-class sample (4 old classes)
        ours = margin_ranking_loss(torch.tensor(c), torch.tensor(labels), 4, 2, 0.5).item()
        assert ours == pytest.approx(official_margin_ranking(c, labels, 4, 2, 0.5), rel=1e-9)


def test_ucir_less_forget_is_the_cosine_embedding_loss_on_unnormalized_features():
    """incremental_train_and_eval_MR_LF.py loss1: ``nn.CosineEmbeddingLoss()(cur_features,
    ref_features, ones)``, both the inputs of the cosine layers (not normalized)."""
    f = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    old = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # hand: cos 1 and 1/sqrt(2): ((1 - 1) + (1 - 0.70710678)) / 2 = 0.14644660940672627
    assert less_forget_loss(f, old).item() == pytest.approx(0.14644660940672627, rel=1e-9)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5))
    assert less_forget_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(
        official_cosine_embedding_loss(a, b), rel=1e-9
    )


def test_ucir_terms_and_weights_match_the_official_total():
    """incremental_train_and_eval_MR_LF.py line 125: loss = loss1 + loss2 + loss3 with
    loss1 = CosineEmbeddingLoss * cur_lamda, cur_lamda = lamda * sqrt(old / new) (``--lamda 5
    --adapt_lamda``, class_incremental_cosine_cifar100.py lines 191-211), loss2 = CE on sigma * cos,
    loss3 = MarginRankingLoss(0.5) * lw_mr (1)."""
    rng = np.random.default_rng(3)
    sigma, num_old = 4.0, 2
    feats, old_feats = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    out = {
        "logits": torch.tensor(sigma * UCIR_COS),
        "similarities": torch.tensor(UCIR_COS),
        "features": torch.tensor(feats),
        "old_features": torch.tensor(old_feats),
    }
    terms = stub(UCIR, UCIRConfig()).losses(out, torch.tensor(UCIR_Y), Step(1, num_old, 5))
    ce = 0.0
    for row, label in zip(sigma * UCIR_COS, UCIR_Y):
        ce += math.log(sum(math.exp(v) for v in row)) - row[label]
    ce /= len(UCIR_Y)
    lamda = 5.0 * math.sqrt(2 / 3)  # lamda_mult = old classes / nb_cl = 2 / 3
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-9)
    assert terms["less_forget"].item() == pytest.approx(lamda * official_cosine_embedding_loss(feats, old_feats), rel=1e-9)
    assert terms["margin_ranking"].item() == pytest.approx(0.8 / 6, rel=1e-9)


# --------------------------------------------------------------------------------------
# PODNet
# --------------------------------------------------------------------------------------


def official_nca(similarities: torch.Tensor, targets: torch.Tensor, scale, margin: float, per_target: bool = True) -> torch.Tensor:
    """inclearn/lib/losses/base.py ``nca`` with ``exclude_pos_denominator=True``, line by line.

    The official line 74 is ``scale * (similarities - margin)``: a scalar margin on every class,
    which cancels (issue #59; its ``margins`` tensor is built and never used). ``per_target``
    uses that ``margins`` tensor instead, the paper's margin on the target only."""
    rows = torch.arange(similarities.shape[0])
    margins = torch.zeros_like(similarities)
    margins[rows, targets] = margin
    similarities = scale * (similarities - (margins if per_target else margin))
    similarities = similarities - similarities.max(1)[0].view(-1, 1)  # Stability
    disable_pos = torch.zeros_like(similarities)
    disable_pos[rows, targets] = similarities[rows, targets]
    numerator = similarities[rows, targets]
    denominator = similarities - disable_pos
    losses = numerator - torch.log(torch.exp(denominator).sum(-1))
    losses = -losses
    return torch.mean(losses)


def test_nca_by_hand_when_the_target_leads_and_when_it_trails():
    """base.py ``nca``: shift by the row max, the target's denominator term becomes exp(0)."""
    y = torch.tensor([0])
    # target is the max: s = [2 - 0.5, 0, 0] - 1.5 = [0, -1.5, -1.5]; loss = log(1 + 2 e^-1.5) - 0
    # = log(1.44626032) = 0.3689811354013154 (dropping the target from the denominator: ln 2 - 1.5 = -0.807)
    assert nca_loss(torch.tensor([[2.0, 0.0, 0.0]]), y, 0.5).item() == pytest.approx(0.3689811354013154, rel=1e-6)
    # target is not the max: s = [0, 1, 2] - 2 = [-2, -1, 0]; loss = log(1 + e^-1 + e^0) + 2
    # = 0.8619948 + 2 = 2.8619948040582512 (old form log(e + e^2) - 0 = 2.3133; softmax CE 2.4076)
    assert nca_loss(torch.tensor([[0.0, 1.0, 2.0]]), y, 0.0).item() == pytest.approx(2.8619948040582512, rel=1e-6)


def test_nca_and_its_gradient_match_the_official_function_with_the_margin_on_the_target():
    """base.py ``nca`` as PODNet calls it (inclearn/models/podnet.py ``_compute_loss``: unscaled
    LSC similarities, ``scale`` = the learned factor, margin 0.6), our call being
    ``nca_loss(scale * similarities, y, 0.6 * scale)``; gradients wrt the similarities and the
    scale, through the row maximum, by autograd of both."""
    torch.manual_seed(0)
    sim = (2 * torch.rand(6, 5, dtype=torch.float64) - 2).requires_grad_(True)  # LSC range [-4, 0]
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        sim[0, 0] = 0.0  # row 0: the target leads by far (max through the target)
        sim[5, 0] = -3.9  # row 5: the target trails
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ours = nca_loss(scale * sim, y, 0.6 * scale)
    ref = official_nca(sim, y, scale, 0.6)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    g_ours = torch.autograd.grad(ours, (sim, scale))
    g_ref = torch.autograd.grad(ref, (sim, scale))
    assert torch.allclose(g_ours[0], g_ref[0], atol=1e-12) and torch.allclose(g_ours[1], g_ref[1], atol=1e-12)
    # the official scalar margin cancels: the official loss is the same with margin 0 (issue #59)
    no_margin = official_nca(sim, y, scale, 0.0)
    assert official_nca(sim, y, scale, 0.6, per_target=False).item() == pytest.approx(no_margin.item(), rel=1e-12)
    assert abs(ours.item() - no_margin.item()) > 0.1
    # PODNet.losses feeds the method's margin times the learned scale with ``margin_on: target``,
    # and by default (the official code) a margin that cancels
    terms = stub(PODNet, PODNetConfig(margin_on="target")).losses({"logits": scale * sim, "scale": scale}, y, Step(0, 0, 5))
    assert terms["nca"].item() == pytest.approx(ref.item(), rel=1e-12)
    terms = stub(PODNet, PODNetConfig()).losses({"logits": scale * sim, "scale": scale}, y, Step(0, 0, 5))
    assert terms["nca"].item() == pytest.approx(official_nca(sim, y, scale, 0.6, per_target=False).item(), rel=1e-12)


def official_block(block, x: torch.Tensor) -> torch.Tensor:
    """my_resnet.py ``ResidualBlock.forward`` (last_relu False) on our block's layers: conv_a, bn_a,
    ReLU, conv_b, bn_b; shortcut ``x[..., ::2, ::2]`` then ``cat((x, x.mul(0)), 1)``; no ReLU."""
    y = torch.relu(block.bn1(block.conv1(x)))
    y = block.bn2(block.conv2(y))
    if y.shape != x.shape:
        x = x[..., ::2, ::2]
        x = torch.cat((x, x.mul(0)), 1)
    return x + y


def official_attention_maps(net: CifarResNet, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """my_resnet.py ``CifarResNet.forward`` (n = 5): stage_1 = 5 blocks, stage_2 = 5 (the first
    strided), stage_3 = 4 (the first strided), stage_4 = one block; attentions =
    [feats_s1[-1], feats_s2[-1], feats_s3[-1], x] and raw_features = avg-pool of x (no ReLU)."""
    blocks = [b for stage in net.stages for b in stage]
    h = torch.relu(net.bn1(net.conv1(x)))
    maps = []
    for group in (blocks[0:5], blocks[5:10], blocks[10:14], blocks[14:15]):
        for block in group:
            h = official_block(block, h)
        maps.append(h)
    return h.mean(dim=(2, 3)), maps


def official_pod_spatial(list_a: list[np.ndarray], list_b: list[np.ndarray]) -> float:
    """distillation.py ``pod(..., collapse_channels="spatial", normalize=True)`` in numpy."""
    loss = 0.0
    for a, b in zip(list_a, list_b):
        a, b = a**2, b**2
        a_h, b_h = a.sum(axis=3).reshape(a.shape[0], -1), b.sum(axis=3).reshape(b.shape[0], -1)
        a_w, b_w = a.sum(axis=2).reshape(a.shape[0], -1), b.sum(axis=2).reshape(b.shape[0], -1)
        a, b = np.concatenate([a_h, a_w], axis=-1), np.concatenate([b_h, b_w], axis=-1)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        loss += np.mean(np.linalg.norm(a - b, axis=-1))
    return loss / len(list_a)


def podnet_resnet(seed: int) -> CifarResNet:
    torch.manual_seed(seed)
    net = CifarResNet(32, in_channels=3, block_relu=False, last_relu=False, zero_init_residual=True)
    # gamma 0 makes every residual branch 0 at init; random BatchNorm affines give non-trivial maps
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, -1.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.2)
    return net.eval().double()


def test_pod_spatial_on_the_official_four_maps():
    """my_resnet.py ``CifarResNet.forward`` (the map list) and distillation.py ``pod`` (the loss),
    as inclearn/models/podnet.py calls it (``pod(old_atts, atts, collapse_channels="spatial")``)."""
    new, old = podnet_resnet(1), podnet_resnet(2)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        features, maps = new(x, return_maps=True)
        old_features, old_maps = old(x, return_maps=True)
        ref_features, ref_maps = official_attention_maps(new, x)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8)]
    assert all(torch.allclose(m, r, atol=1e-10) for m, r in zip(maps, ref_maps))
    assert all((m < 0).any() for m in maps)  # no ReLU after any residual addition
    assert torch.allclose(features, ref_features, atol=1e-10)  # raw_features: pooled pre-ReLU stage_4
    expected = official_pod_spatial([m.numpy() for m in old_maps], [m.numpy() for m in maps])
    assert expected > 0.01
    assert pod_spatial_loss(maps, old_maps).item() == pytest.approx(expected, rel=1e-9)
    assert pod_spatial_loss(old_maps, maps).item() == pytest.approx(expected, rel=1e-9)
    # POD-flat: base.py ``embeddings_similarity`` = F.cosine_embedding_loss(old, new, ones)
    flat = official_cosine_embedding_loss(old_features.numpy(), features.numpy())
    assert pod_flat_loss(features, old_features).item() == pytest.approx(flat, rel=1e-9)
    # factors (podnet.py ``_compute_loss``): scheduled_factor * sqrt(n_classes / task_size),
    # n_classes counting the new ones: 3 and 1 (podnet_cnn_cifar100.yaml) times sqrt(60 / 10)
    out = {"logits": torch.zeros(3, 60, dtype=torch.float64), "scale": 1.0, "maps": maps, "old_maps": old_maps,
           "features": features, "old_features": old_features}
    terms = stub(PODNet, PODNetConfig()).losses(out, torch.tensor([0, 55, 59]), Step(1, 50, 60))
    assert terms["pod_spatial"].item() == pytest.approx(3 * math.sqrt(6) * expected, rel=1e-9)
    assert terms["pod_flat"].item() == pytest.approx(math.sqrt(6) * flat, rel=1e-9)


# --------------------------------------------------------------------------------------
# DER
# --------------------------------------------------------------------------------------


def official_aux_targets(targets: list[int], increments: list[int], task: int) -> list[int]:
    """incmodel.py ``_compute_loss`` with ``aux_n+1``: old -> 0, new ``-= sum(increments[:task]) - 1``."""
    start = sum(increments[:task])
    return [0 if t < start else t - (start - 1) for t in targets]


def test_der_auxiliary_labels_and_head_width():
    """incmodel.py ``_compute_loss`` (labels), network.py ``_add_classes_multi_fc`` (auxiliary head
    of ``n_classes + 1`` outputs on the newest extractor, classifier over all features)."""
    increments = [50, 10, 10]
    y1 = [0, 49, 50, 55, 59]
    assert official_aux_targets(y1, increments, 1) == [0, 0, 1, 6, 10]  # by hand: 1 + k - 50
    assert auxiliary_targets(torch.tensor(y1), 50).tolist() == [0, 0, 1, 6, 10]
    y2 = [3, 59, 60, 69]
    assert auxiliary_targets(torch.tensor(y2), 60).tolist() == official_aux_targets(y2, increments, 2) == [0, 0, 1, 10]
    # the loss is plain cross-entropy on those labels: uniform logits give log(11)
    assert auxiliary_loss(torch.zeros(5, 11), torch.tensor(y1), 50).item() == pytest.approx(math.log(11))

    class Extractor(nn.Module):
        out_dim = 4

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x)

    net = DERNet(Extractor)
    net.expand(50, 50, grow=False)
    net.expand(10, 60, grow=True)
    assert net.aux_classifier.out_features == 11 and net.aux_classifier.in_features == 4
    assert net.classifier.out_features == 60 and net.classifier.in_features == 8
    assert net.classifier.bias is None and net.aux_classifier.bias is None  # use_bias: False


# --------------------------------------------------------------------------------------
# SIR
# --------------------------------------------------------------------------------------

# 4 classes at step 2: class 0 from step 0 (age 2), class 1 from step 1 (age 1), 2 and 3 new.
SIR_COUNTS = [5, 1, 100, 100]
SIR_CLASS_STEPS = torch.tensor([0, 1, 2, 2])


def sir_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed 2-D features per class: 0 all at (0, 0); 1 one sample at (0, 2); 2 half at (1, 1),
    half at (1, -1) (mean (1, 0), std (0, 1)); 3 half at (1, 5), half at (1, 1) (mean (1, 3), std (0, 2))."""
    rows = [[0.0, 0.0]] * 5 + [[0.0, 2.0]] + [[1.0, 1.0], [1.0, -1.0]] * 50 + [[1.0, 5.0], [1.0, 1.0]] * 50
    labels = [0] * 5 + [1] + [2] * 100 + [3] * 100
    return torch.tensor(rows), torch.tensor(labels)


def numpy_w2_similarity(features: np.ndarray, labels: np.ndarray, num_old: int, num_classes: int) -> np.ndarray:
    """SIR_METHOD.md Sec. 3: diagonal Gaussians (population std), W2^2, T_d = median over old/new pairs."""
    mu = np.stack([features[labels == k].mean(0) for k in range(num_classes)])
    sd = np.stack([features[labels == k].std(0) for k in range(num_classes)])
    d = np.array([[np.sum((mu[k] - mu[j]) ** 2) + np.sum((sd[k] - sd[j]) ** 2) for j in range(num_classes)] for k in range(num_classes)])
    cross = [d[k, j] for k in range(num_classes) for j in range(num_classes) if (k < num_old) != (j < num_old)]
    return np.exp(-d / np.median(cross))


def adjust(sir: SIR, logits: torch.Tensor, y: torch.Tensor, scale=1.0, head: str = "linear") -> torch.Tensor:
    """Through the plug-in, as training runs it on a head of kind ``head``."""
    plugin = SIRPlugin(sir.cfg)
    plugin.sir, plugin.head = sir, HeadSpec(scale="scale" if head == "cosine" else None, kind=head)
    return plugin.adjust({"logits": logits, "scale": scale}, y)["logits"]


def sir_at_step_2(**options) -> SIR:
    features, labels = sir_features()
    sir = SIR(SIRConfig(enabled=True, fc=1.0, ca=0.5, it=0.5, **options))
    sir.begin_step(2, 2, 4, labels, SIR_CLASS_STEPS, lambda: features)
    return sir


# offsets: w = 0.5 ** max(age - 1, 0) = [0.5, 1, 1, 1]; b = log(n / 100) = [ln .05, ln .01, 0, 0]
# -> tau w b = [0.5 ln 0.05, ln 0.01, 0, 0] = [-1.4978661367769954, -4.605170185988091, 0, 0]
SIR_OFFSET = [-1.4978661367769954, -4.605170185988091, 0.0, 0.0]
# IT, lambda 0.5, per target y: 0.5 e^(-1/3) = 0.35826565528689464, 0.5 e^(-7/3) = 0.04848598393220253,
# 0.5 e^(-1) = 0.18393972058572117; nothing for the target or its own side (old/old, new/new)
SIR_IT = {
    0: [0.0, 0.0, 0.35826565528689464, 0.04848598393220253],
    1: [0.0, 0.0, 0.18393972058572117, 0.18393972058572117],
    2: [0.35826565528689464, 0.18393972058572117, 0.0, 0.0],
    3: [0.04848598393220253, 0.18393972058572117, 0.0, 0.0],
}
SIR_Z = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -0.5, 0.0, 1.0], [2.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
SIR_Y = torch.tensor([0, 1, 2, 3])


def expected_sir(z, offset_factor: float, it_factor: float) -> torch.Tensor:
    return torch.tensor(
        [[z[i, k].item() + offset_factor * SIR_OFFSET[k] + it_factor * SIR_IT[int(SIR_Y[i])][k] for k in range(4)] for i in range(4)]
    )


def test_sir_similarity_is_the_w2_similarity_of_the_spec():
    """SIR_METHOD.md Sec. 3: diagonal Gaussians of the old model's features, squared W2,
    S = exp(-d / T_d), T_d the median over old/new pairs."""
    features, labels = sir_features()
    assert torch.bincount(labels).tolist() == SIR_COUNTS
    sir = sir_at_step_2()
    # hand W2^2 over old/new pairs: d(0,2) = 1 + 1 = 2, d(0,3) = 10 + 4 = 14, d(1,2) = 5 + 1 = 6,
    # d(1,3) = 2 + 4 = 6; median of {2, 6, 6, 14} (each twice) = 6, unambiguous
    # S = exp(-d / 6): S(0,2) = e^(-1/3), S(0,3) = e^(-7/3), S(1,2) = S(1,3) = e^(-1)
    expected_s = numpy_w2_similarity(features.numpy(), labels.numpy(), 2, 4)
    assert expected_s[0, 2] == pytest.approx(math.exp(-1 / 3)) and expected_s[1, 3] == pytest.approx(math.exp(-1))
    assert np.allclose(sir.similarity.numpy(), expected_s, atol=1e-6)


def test_sir_adjusts_plain_linear_logits():
    """SIR_METHOD.md Secs. 1-3, docs/sir.md: z~_k = z_k + tau w_k log(n_k / n_max), plus
    lambda S(y, j) on the classes j across the old/new boundary from y (finetune, DER)."""
    assert Finetune.head == HeadSpec(logits="logits", scale=None, kind="linear")
    out = adjust(sir_at_step_2(), SIR_Z, SIR_Y, 1.0, Finetune.head.kind)
    assert torch.allclose(out, expected_sir(SIR_Z, 1.0, 1.0), atol=1e-6)


def test_sir_adjusts_scaled_cosine_logits():
    """Scaled-cosine heads (UCIR, PODNet: logits = scale * cos): IT's lambda is in cosine units, so
    its margins are multiplied by the scale; FC's offsets are in similarity units by default,
    tau w b / s_ref times the scale (``sir.cosine_scale`` = s_ref, 16), or in logit units (null)."""
    assert UCIR.head == PODNet.head == HeadSpec(logits="logits", scale="scale", kind="cosine") and SIRConfig().cosine_scale == 16.0
    scale, cos = 8.0, SIR_Z / 4
    out = adjust(sir_at_step_2(), scale * cos, SIR_Y, torch.tensor(scale), "cosine")
    assert torch.allclose(out, expected_sir(scale * cos, 0.5, scale), atol=1e-5)  # 8 / 16
    out = adjust(sir_at_step_2(cosine_scale=4.0), scale * cos, SIR_Y, torch.tensor(scale), "cosine")
    assert torch.allclose(out, expected_sir(scale * cos, 2.0, scale), atol=1e-5)  # 8 / 4
    out = adjust(sir_at_step_2(cosine_scale=None), scale * cos, SIR_Y, torch.tensor(scale), "cosine")
    assert torch.allclose(out, expected_sir(scale * cos, 1.0, scale), atol=1e-5)


def test_sir_on_the_sigmoid_head():
    """iCaRL's sigmoid BCE: by default (``sir.sigmoid = weight``) FC becomes per-sample weights
    exp(-tau w_y b_y), mean 1, and only IT's margins touch the logits; with ``margin`` FC's offsets
    are added to the logits as on a linear head."""
    assert ICaRL.head == HeadSpec(logits="logits", scale=None, kind="sigmoid")
    head = ICaRL.head.kind
    margin = sir_at_step_2(sigmoid="margin")
    assert torch.allclose(adjust(margin, SIR_Z, SIR_Y, 1.0, head), expected_sir(SIR_Z, 1.0, 1.0), atol=1e-6)
    assert margin.sample_weights(SIR_Y) is None
    sir = sir_at_step_2()
    assert torch.allclose(adjust(sir, SIR_Z, SIR_Y, 1.0, head), expected_sir(SIR_Z, 0.0, 1.0), atol=1e-6)
    # exp(-0.5 ln 0.05) = sqrt(20) = 4.47213595, exp(-ln 0.01) = 100, 1, 1; mean 26.61803399
    raw = torch.tensor([4.47213595499958, 100.0, 1.0, 1.0])
    assert torch.allclose(sir.sample_weights(SIR_Y), raw / raw.mean(), atol=1e-6)


# --------------------------------------------------------------------------------------
# WA
# --------------------------------------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def official_wa_loss(logits: np.ndarray, y: np.ndarray, old_logits: np.ndarray, known: int, kd_weight: float | None) -> float:
    """PyCIL models/wa.py ``_update_representation`` and ``_KD_loss``: loss_kd = -sum(softmax(old / 2) *
    log_softmax(logits[:, :known] / 2)) / batch; (1 - known / total) CE + known / total KD (716625e), or
    CE + 2 KD before it (``kd_weight``)."""
    b, total = logits.shape
    ce = -sum(math.log(np_softmax(logits[i])[y[i]]) for i in range(b)) / b
    kd = -sum(float(np.sum(np_softmax(old_logits[i] / 2) * np.log(np_softmax(logits[i, :known] / 2)))) for i in range(b)) / b
    if kd_weight is not None:
        return ce + kd_weight * kd
    lam = known / total
    return (1 - lam) * ce + lam * kd


def test_wa_aligning_scales_the_new_rows_by_the_ratio_of_mean_norms():
    """PyCIL utils/inc_net.py ``IncrementalNet.weight_align``: gamma = mean ||w_old|| / mean ||w_new||."""
    weight = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 7.0], [6.0, 8.0]], dtype=torch.float64)
    # hand: old norms 5, 2 (mean 3.5), new 7, 10 (mean 8.5): gamma = 7 / 17
    assert align_weights(weight, num_old=2) == pytest.approx(7 / 17, rel=1e-12)
    expected = [[3.0, 4.0], [0.0, 2.0], [0.0, 49 / 17], [42 / 17, 56 / 17]]
    assert np.allclose(weight.numpy(), expected, rtol=1e-12)
    rng = np.random.default_rng(4)
    w = rng.normal(size=(7, 5))
    norms = np.sqrt((w**2).sum(1))
    gamma = norms[:4].mean() / norms[4:].mean()
    got = torch.tensor(w)
    assert align_weights(got, num_old=4) == pytest.approx(gamma, rel=1e-12)
    assert np.allclose(got.numpy(), np.concatenate([w[:4], gamma * w[4:]]), rtol=1e-12)


def test_wa_weights_ce_and_kd_by_the_share_of_old_classes():
    """PyCIL models/wa.py ``_update_representation``: (1 - lambda) CE + lambda KD, lambda = known / total;
    ``method.kd_weight: 2`` is its earlier CE + 2 KD."""
    zero = {"logits": torch.zeros(1, 4, dtype=torch.float64), "old_logits": torch.zeros(1, 2, dtype=torch.float64)}
    # hand: CE = ln 4, KD = ln 2 on uniform logits; lambda = 2 / 4: 0.5 ln 4 + 0.5 ln 2 = 1.5 ln 2
    terms = stub(WA, WAConfig()).losses(zero, torch.tensor([3]), Step(1, 2, 4))
    assert sum(terms.values()).item() == pytest.approx(1.0397207708399179, rel=1e-6)
    terms = stub(WA, WAConfig(kd_weight=2.0)).losses(zero, torch.tensor([3]), Step(1, 2, 4))
    assert sum(terms.values()).item() == pytest.approx(2.772588722239781, rel=1e-6)  # ln 4 + 2 ln 2
    rng = np.random.default_rng(5)
    logits, old, y = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 3)) * 2, rng.integers(0, 5, size=6)
    out = {"logits": torch.tensor(logits), "old_logits": torch.tensor(old)}
    for kd_weight in (None, 2.0):
        terms = stub(WA, WAConfig(kd_weight=kd_weight)).losses(out, torch.tensor(y), Step(1, 3, 5))
        assert sum(terms.values()).item() == pytest.approx(official_wa_loss(logits, y, old, 3, kd_weight), rel=1e-6)


# --------------------------------------------------------------------------------------
# BiC
# --------------------------------------------------------------------------------------


def tiny_bic_net(seed: int) -> BiasCorrectedNet:
    """Features = the input (identity backbone), a linear head over 3 steps of 2 classes, float64."""
    torch.manual_seed(seed)
    net = BiasCorrectedNet(nn.Identity(), IncrementalLinear(3))
    for _ in range(3):
        net.expand(2)
    return net.double()


def test_bic_stage_1_distils_the_old_models_corrected_logits():
    """resnet.py ``resnet_model_fn`` (itera >= 2): distillation targets softmax(concat(o_pre_old, beta o_pre_new +
    gamma) / 2), loss_distill = softmax_cross_entropy(logits[:, old] / 2, targets) (batch mean),
    loss = lambda_ loss_distill + (1 - lambda_) CE, lambda_ = itera / (itera + 1)."""
    net = tiny_bic_net(0)
    net.correct(2, 4)  # the previous step's correction, as stage 2 left it
    with torch.no_grad():
        net.alpha.fill_(1.5)
        net.beta.fill_(-0.5)
    method = stub(BiC, BiCConfig())
    method.model, method.old_model = net, frozen_copy(net)
    net.correct(4, 6)  # this step's, the identity until stage 2
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(5, 3)), rng.integers(0, 6, size=5)
    terms = method.losses(method.forward(torch.tensor(x), Step(2, 4, 6)), torch.tensor(y), Step(2, 4, 6))
    w, b = net.head.weight.detach().numpy(), net.head.bias.detach().numpy()
    o = x @ w.T + b  # old and new model share the weights here; only the correction differs
    target = np_softmax(np.concatenate([o[:, :2], 1.5 * o[:, 2:4] - 0.5], 1) / 2)
    distill = -np.mean(np.sum(target * np.log(np_softmax(o[:, :4] / 2)), 1))
    ce = -np.mean(np.log(np_softmax(o)[np.arange(5), y]))
    lam = 2 / 3  # itera 2
    assert sum(terms.values()).item() == pytest.approx(lam * distill + (1 - lam) * ce, rel=1e-6)  # KD runs in float32


def official_bic_stage_2(raw: np.ndarray, y: np.ndarray, num_old: int, beta: float, gamma: float) -> float:
    """resnet.py ``resnet_model_fn`` (flag_bias): concat(o_old, beta o_new + gamma), softmax_cross_entropy
    (batch mean) + 0.1 * tf.nn.l2_loss(gamma) (= gamma^2 / 2); the paper's alpha, beta are its beta, gamma."""
    z = np.concatenate([raw[:, :num_old], beta * raw[:, num_old:] + gamma], 1)
    return float(-np.mean(np.log(np_softmax(z)[np.arange(len(y)), y])) + 0.1 * gamma**2 / 2)


def bic_stage_2_loss(net: BiasCorrectedNet, alpha: float, beta: float):
    """sircil's stage-2 loss function, as ``BiC.after_step`` hands it to its phase."""
    method = method_class("bic")(make_config(fashion_config(method={"name": "bic"})), dataset_spec("fashion_mnist"))
    method.model, method.split = net, (torch.arange(0), torch.arange(4))
    net.correct(4, 6)
    with torch.no_grad():
        net.alpha.fill_(alpha)
        net.beta.fill_(beta)
    phases = []
    method.after_step(step_context(Step(2, 4, 6), torch.zeros(4, dtype=torch.long), fit=phases.append))
    (phase,) = phases
    assert phase.param_groups[0]["params"] == [net.alpha, net.beta]
    return phase.loss_fn


def test_bic_stage_2_loss_and_its_gradient_match_the_official_bias_layer():
    """resnet.py ``resnet_model_fn`` with flag_bias: only the bias layer's two scalars train on that loss."""
    zero = tiny_bic_net(1)
    with torch.no_grad():
        zero.head.weight.zero_()
        zero.head.bias.zero_()
    terms, _ = bic_stage_2_loss(zero, 3.0, math.log(2))(torch.ones(1, 3, dtype=torch.float64), torch.tensor([0]))
    # hand: logits (0, 0, 0, 0, ln 2, ln 2): CE = ln 8; + 0.1 * (ln 2)^2 / 2; total 2.103464192375746
    assert sum(terms.values()).item() == pytest.approx(2.103464192375746, rel=1e-9)
    net = tiny_bic_net(2)
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 3)), rng.integers(0, 6, size=6)
    terms, _ = bic_stage_2_loss(net, 0.7, 0.3)(torch.tensor(x), torch.tensor(y))
    loss = sum(terms.values())
    loss.backward()
    raw = x @ net.head.weight.detach().numpy().T + net.head.bias.detach().numpy()
    assert loss.item() == pytest.approx(official_bic_stage_2(raw, y, 4, 0.7, 0.3), rel=1e-9)
    h = 1e-6  # central differences of the official loss against autograd's gradient of alpha and beta
    d_alpha = (official_bic_stage_2(raw, y, 4, 0.7 + h, 0.3) - official_bic_stage_2(raw, y, 4, 0.7 - h, 0.3)) / (2 * h)
    d_beta = (official_bic_stage_2(raw, y, 4, 0.7, 0.3 + h) - official_bic_stage_2(raw, y, 4, 0.7, 0.3 - h)) / (2 * h)
    assert net.alpha.grad.item() == pytest.approx(d_alpha, rel=1e-6)
    assert net.beta.grad.item() == pytest.approx(d_beta, rel=1e-6)
    assert net.head.weight.grad is None  # the network is frozen


# --------------------------------------------------------------------------------------
# SS-IL
# --------------------------------------------------------------------------------------


def official_ssil_loss(output: np.ndarray, old: np.ndarray, target: np.ndarray, b: int, seen: list[int], t: float = 2.0) -> float:
    """trainer/ssil.py ``Trainer.train``: the first b rows are new samples, the rest replayed;
    loss_CE = (CE_sum(output[:b, mid:end], target % (end - mid)) + CE_sum(output[b:, :mid], target_r)) / (b + r);
    loss_KD = sum over tasks of kl_div(log_softmax(output[:, task] / T), softmax(score[:, task] / T), batchmean) * T^2."""
    mid, end = seen[-2], seen[-1]
    ce = 0.0
    for i in range(len(target)):
        part, label = (output[i, mid:end], target[i] % (end - mid)) if i < b else (output[i, :mid], target[i])
        ce -= math.log(np_softmax(part)[label])
    kd = 0.0
    for start_kd, end_kd in zip(seen[:-2], seen[1:-1]):
        p = np_softmax(old[:, start_kd:end_kd] / t)
        log_q = np.log(np_softmax(output[:, start_kd:end_kd] / t))
        kd += float(np.sum(p * (np.log(p) - log_q))) / len(target) * t**2
    return ce / len(target) + kd


def test_ssil_separated_softmax_by_hand():
    """trainer/ssil.py ``Trainer.train``, loss_CE: each half of the batch meets only its own side's logits."""
    logits = torch.tensor([[5.0, -5.0, 0.0, math.log(3)], [math.log(3), 0.0, 9.0, 9.0]], dtype=torch.float64)
    # hand: new sample (label 3) over (0, ln 3): -ln(3/4); replayed (label 0) over (ln 3, 0): -ln(3/4);
    # sum / 2 = ln(4/3); a softmax over all four logits would give about 10.0 and 18.0
    assert separated_softmax_loss(logits, torch.tensor([3, 0]), 2).item() == pytest.approx(0.28768207245178085, rel=1e-12)


def test_ssil_task_wise_distillation_by_hand():
    """trainer/ssil.py ``Trainer.train``, loss_KD: one KL per earlier task, each over that task's logits only."""
    new = torch.tensor([[0.0, 0.0, 0.0, 0.0, 7.0, -3.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 0.0, 2 * math.log(3), 0.0]], dtype=torch.float64)
    # hand: task (0, 2) targets (1/2, 1/2), KL 0; task (2, 4) targets softmax((ln 3, 0)) = (3/4, 1/4)
    # against (1/2, 1/2): 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812...; times T^2 = 4: 0.5232481437645479
    got = task_wise_distillation(new, old, [(0, 2), (2, 4)], 2.0).item()
    assert got == pytest.approx(0.5232481437645479, rel=1e-6)  # computed in float32


def test_ssil_total_matches_the_official_training_loss():
    """trainer/ssil.py ``Trainer.train``: loss_KD + loss_CE over a batch of 4 new + 3 replayed samples, 3 tasks."""
    rng = np.random.default_rng(8)
    output, old = rng.normal(size=(7, 6)) * 2, rng.normal(size=(7, 4)) * 2
    target = np.array([4, 5, 5, 4, 0, 3, 2])
    method = stub(SSIL, SSILConfig())
    method.tasks = [(0, 2), (2, 4), (4, 6)]
    terms = method.losses({"logits": torch.tensor(output), "old_logits": torch.tensor(old)}, torch.tensor(target), Step(2, 4, 6))
    assert set(terms) == {"separated_ce", "task_kd"}
    assert sum(terms.values()).item() == pytest.approx(official_ssil_loss(output, old, target, 4, [0, 2, 4, 6]), rel=1e-6)


# --------------------------------------------------------------------------------------
# DDE
# --------------------------------------------------------------------------------------


def official_dce(outputs: np.ndarray, outputs_match: np.ndarray, targets: np.ndarray, top_k: int) -> float:
    """incremental_train_and_eval_DCE_MR_LF_TDE.py lines 219-227, mu_1 = mu_2 = 1: nll(log((softmax(outputs)
    + mean over top_k of softmax(outputs_match)) / 2))."""
    joint = (np_softmax(outputs) + np_softmax(outputs_match).reshape(len(targets), top_k, -1).mean(1)) / 2
    return float(-np.mean(np.log(joint[np.arange(len(targets)), targets])))


def official_tde(features: np.ndarray, weights: np.ndarray, sigma: float, causal_embed: np.ndarray) -> np.ndarray:
    """compute_accuracy_TDE.py ``compute_accuracy_TDE`` (iteration > 0), causal_embed normalized by its caller
    (cbf_class_incremental_cosine_cifar100.py): outputs - 0.5 cos(f, e) (e W_norm^T) sigma."""
    e = causal_embed / np.linalg.norm(causal_embed)
    w = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    outputs = features / np.linalg.norm(features, axis=1, keepdims=True) @ w.T * sigma
    cos_val = (features @ e)[:, None] / np.linalg.norm(features, axis=1, keepdims=True)
    return outputs - 0.5 * cos_val * (e @ w.T)[None, :] * sigma


def test_dde_colliding_effect_by_hand_and_against_the_official_lines():
    """incremental_train_and_eval_DCE_MR_LF_TDE.py, loss1 (``--DCE``)."""
    logits = torch.zeros(1, 2, dtype=torch.float64)
    neighbours = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]], dtype=torch.float64)  # K = 2
    # hand: p = (1/2, 1/2); neighbours (3/4, 1/4) and (1/2, 1/2), mean (5/8, 3/8); joint (9/16, 7/16);
    # -ln(9/16) = ln(16/9)
    assert colliding_effect_loss(logits, neighbours, torch.tensor([0])).item() == pytest.approx(0.5753641449035618, rel=1e-6)  # float32
    rng = np.random.default_rng(9)
    out, match, y = rng.normal(size=(4, 5)) * 2, rng.normal(size=(12, 5)) * 2, rng.integers(0, 5, size=4)
    got = colliding_effect_loss(torch.tensor(out), torch.tensor(match), torch.tensor(y)).item()
    assert got == pytest.approx(official_dce(out, match, y, 3), rel=1e-6)


def test_dde_momentum_effect_removal_by_hand_and_against_the_official_inference():
    """compute_accuracy_TDE.py ``compute_accuracy_TDE`` with alpha_TDE 0.5 (``--TDE``)."""
    f, w, sigma = np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]), 2.0
    logits = torch.tensor([[1.2, 1.6]], dtype=torch.float64)  # sigma cos(f, w_k) = 2 (0.6, 0.8)
    # hand: e = (2, 0) normalized (1, 0); cos(f, e) = 0.6; e W_norm^T = (1, 0): logits - 0.5 * 0.6 * (1, 0) * 2
    got = remove_momentum_effect(logits, torch.tensor(f), torch.tensor(w), torch.tensor(sigma), torch.tensor([2.0, 0.0], dtype=torch.float64), 0.5)
    assert np.allclose(got.numpy(), [[0.6, 1.6]], rtol=1e-12)
    rng = np.random.default_rng(10)
    f, w, e = rng.normal(size=(4, 6)), rng.normal(size=(5, 6)), rng.normal(size=6) * 9
    cos_logits = sigma * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    got = remove_momentum_effect(torch.tensor(cos_logits), torch.tensor(f), torch.tensor(w), torch.tensor(sigma), torch.tensor(e), 0.5)
    assert np.allclose(got.numpy(), official_tde(f, w, sigma, e), rtol=1e-9)
