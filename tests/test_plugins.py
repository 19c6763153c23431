"""Training plug-ins: the protocol, logit adjustment against Menon et al.'s formula, and the
base-step cache key, which must classify every config field."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sircil.config import PLUGIN_CONFIGS, Config
from sircil.config_io import ConfigError
from sircil.config_sections import LogitAdjustmentConfig
from sircil.plugins import PLUGINS, build_plugins
from sircil.plugins.logit_adjustment import LogitAdjustment
from sircil.trainer import run_experiment
from sircil.training.base_cache import EXCLUDED, KEYED_FIELDS, KEYED_SECTIONS, base_cache_key
from sircil.training.context import HeadSpec
from sircil.training.phase import Step

from conftest import base_step_key, epoch_losses, fashion_config, make_config, step_context

COUNTS = [5, 5, 40, 20]
LABELS = torch.tensor(sum(([k] * n for k, n in enumerate(COUNTS)), []))


def adjusted(cfg: LogitAdjustmentConfig, head: HeadSpec = HeadSpec()) -> LogitAdjustment:
    plugin = LogitAdjustment(cfg)
    plugin.begin_step(step_context(Step(1, 2, 4), LABELS), head)
    return plugin


def test_logit_adjusted_loss_is_menons():
    """Menon et al. 2021, Eq. 10: CE(z + tau log pi, y), pi_k = n_k / N. Ours adds tau log(n_k / n_max):
    the same loss, as the difference is one constant per sample."""
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 2, 0])
    for tau in (1.0, 0.5):
        plugin = adjusted(LogitAdjustmentConfig(enabled=True, tau=tau))
        ours = F.cross_entropy(plugin.adjust({"logits": z.clone()}, y)["logits"], y)
        prior = torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS)
        menon = F.cross_entropy(z + tau * prior.log(), y)
        torch.testing.assert_close(ours, menon)
        # by hand, first sample (class 0, n 5 of 70): -(z_0 + tau ln(5/70)) + logsumexp(z + tau ln pi)
        first = -(z[0, 0] + tau * math.log(5 / 70)) + torch.logsumexp(z[0] + tau * prior.log(), 0)
        torch.testing.assert_close(F.cross_entropy(plugin.adjust({"logits": z[:1].clone()}, y[:1])["logits"], y[:1]), first)
        assert plugin.adjust_inference({"logits": z.clone()})["logits"].equal(z)


def test_post_hoc_mode_corrects_inference_only():
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 2, 0])
    plugin = adjusted(LogitAdjustmentConfig(enabled=True, mode="post_hoc", tau=1.0))
    assert plugin.adjust({"logits": z.clone()}, y)["logits"].equal(z)
    expected = z - torch.log(torch.tensor(COUNTS, dtype=torch.float) / 40)
    torch.testing.assert_close(plugin.adjust_inference({"logits": z.clone()})["logits"], expected)


def test_the_adjustment_goes_to_the_head_the_method_names():
    z, y = torch.zeros(2, 4), torch.tensor([0, 1])
    plugin = adjusted(LogitAdjustmentConfig(enabled=True), HeadSpec(logits="scaled", scale="scale", kind="cosine"))
    out = plugin.adjust({"scaled": z.clone(), "logits": z.clone()}, y)
    assert out["logits"].equal(z) and not out["scaled"].equal(z)


def test_plugins_are_built_only_when_switched_on_and_validated():
    assert set(PLUGINS) >= {"sir", "logit_adjustment"}
    assert build_plugins(make_config(fashion_config())) == {}
    built = build_plugins(make_config(fashion_config(sir={"enabled": True}, logit_adjustment={"enabled": True})))
    assert list(built) == ["sir", "logit_adjustment"]
    with pytest.raises(ConfigError, match="logit_adjustment.mode"):
        make_config(fashion_config(logit_adjustment={"enabled": True, "mode": "posthoc"}))
    with pytest.raises(ConfigError, match="did you mean logit_adjustment.tau"):
        make_config(fashion_config(logit_adjustment={"tua": 1.0}))


def leaf_fields(config: object) -> list[str]:
    """Every field of the config's sections (``train.lr``) and its top-level values (``seed``)."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else [f.name]
    return out


def test_every_config_field_is_keyed_or_excluded_from_the_base_cache():
    """A new option must be classified here: in the key, excluded with a reason, or a plug-in's."""
    classified = set(KEYED_FIELDS) | set(EXCLUDED)
    unclassified = [
        name for name in leaf_fields(Config())
        if name not in classified and name.split(".")[0] not in KEYED_SECTIONS and name.split(".")[0] not in PLUGINS
    ]
    assert not unclassified, f"classify these fields in training/base_cache.py: {unclassified}"
    assert not (set(KEYED_FIELDS) & set(EXCLUDED))
    assert set(PLUGINS) == set(PLUGIN_CONFIGS) and not set(PLUGINS) & {f.name for f in dataclasses.fields(Config)}  # plug-ins own a section each


def key_of(**sections) -> str:
    cfg = make_config(fashion_config(**sections))
    return json.dumps(base_cache_key(cfg, "cpu", COUNTS, build_plugins(cfg), base_step_key(cfg)), sort_keys=True)


def test_base_cache_key_follows_its_classification():
    base = key_of()
    for sections in ({"memory": {"per_class": 5}}, {"train": {"eval_batch_size": 64, "threads": 2}}, {"scenario": {"base_classes": 2, "steps": 2}},
                     {"logit_adjustment": {"enabled": True, "mode": "post_hoc"}}):
        assert key_of(**sections) == base, sections
    for sections in ({"seed": 8}, {"train": {"lr": 0.05}}, {"method": {"name": "icarl"}}, {"sir": {"enabled": True}},
                     {"logit_adjustment": {"enabled": True}}, {"data": {"train_per_class": 100}}):
        assert key_of(**sections) != base, sections


def test_the_keys_made_before_plugins_are_kept():
    """Base caches made before SIR became a plug-in stay valid: the same key dictionary."""
    cfg = make_config(fashion_config())
    key = base_cache_key(cfg, "cpu", [3, 3], {}, base_step_key(cfg))
    assert key["sir"] is None and "logit_adjustment" not in key
    assert set(key) == {"sircil", "seed", "data", "model", "method", "base_classes", "train", "device", "sir"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loss", "post_hoc"])
def test_logit_adjustment_end_to_end(fashion_root, tmp_path, mode):
    """On a tiny real run: the loss mode changes training from the first imbalanced step on, the
    post-hoc mode leaves training as it was and changes only the test logits."""
    from test_behaviour_pinned import pinned_config

    plain_raw = pinned_config("finetune")
    raw = {**plain_raw, "logit_adjustment": {"enabled": True, "mode": mode}}
    plain = run_experiment(make_config(plain_raw), tmp_path / "plain")
    la = run_experiment(make_config(raw), tmp_path / "la")
    plain_losses = epoch_losses((tmp_path / "plain" / "log.txt").read_text())
    la_losses = epoch_losses((tmp_path / "la" / "log.txt").read_text())
    assert la_losses[(0, "train")] == plain_losses[(0, "train")]  # equally frequent base classes: no offset
    assert la["finished"] and la["base_step_cached"] is False
    bias = [r["logit_bias_old_minus_new"] for r in la["per_step"][1:]]
    plain_bias = [r["logit_bias_old_minus_new"] for r in plain["per_step"][1:]]
    if mode == "loss":
        assert la_losses[(1, "train")] != plain_losses[(1, "train")]
    else:
        assert la_losses == plain_losses
        assert all(b > p for b, p in zip(bias, plain_bias))  # old classes' logits raised at inference


def test_reports_name_the_rectifications():
    from sircil.report import family, method_label

    assert method_label({"method": {"name": "finetune"}, "logit_adjustment": {"enabled": True}}) == "Finetune+LA"
    assert method_label({"method": {"name": "ucir"}, "logit_adjustment": {"enabled": True, "mode": "post_hoc"}}) == "UCIR+LA(post-hoc)"
    assert method_label({"method": {"name": "wa"}}) == "WA" and method_label({"method": {"name": "der"}, "sir": {"enabled": True}}) == "SIR_D"
    assert method_label({"method": {"name": "wa", "weight_clipping": False, "kd_weight": 2.0, "temperature": 2.0}}) == "WA(weight_clipping=False)(kd_weight=2.0)"
    assert method_label({"method": {"name": "wa", "weight_clipping": True, "kd_weight": None}}) == "WA"
    assert method_label({"method": {"name": "icarl"}, "sir": {"enabled": True, "sigmoid": "margin"}}) == "iCaRL+SIR(sigmoid=margin)"
    assert method_label({"method": {"name": "podnet"}, "sir": {"enabled": True, "cosine_scale": None}}) == "PODNet+SIR(cosine_scale=None)"
    # a head rule that does not apply to the method's head does not name the run
    assert method_label({"method": {"name": "podnet"}, "sir": {"enabled": True, "sigmoid": "margin"}}) == "SIR_P"
    assert method_label({"method": {"name": "finetune"}, "sir": {"enabled": True, "cosine_scale": None}}) == "Finetune+SIR"
    assert family("iCaRL+SIR(sigmoid=margin)") == "iCaRL"
    assert family("Finetune+LA") == "Finetune" and family("SIR_P") == "PODNet" and family("UCIR+SIR") == "UCIR"
