"""SIR, Self-Paced Imbalance Rectification (Liu, Zhu, Cao, arXiv 2202.03703), as a plug-in.

SIR changes only the logits that a method's classification loss sees during training
(the method names them in its ``HeadSpec``); inference uses the raw logits. Its
state is rebuilt at every step from the step's actual training set, so it adapts by
itself to any memory size or budget policy. The three parts, each with its own switch
(see docs/sir.md and ../shared/docs/SIR_METHOD.md):

- frequency compensation (FC):   z~_k = z_k + tau * w_k * log(n_k / n_max)
- chronological attenuation (CA): w_k = gamma ** max(a_k - 1, 0), a_k the age of class k
- inheritance transfer (IT):      z~_j += lambda * S(y, j) for the classes j across the
  old/new boundary from the target y, S the old model's class similarity.
"""

from __future__ import annotations

import dataclasses
import logging

from typing import Any, Callable

import torch

from ..config_sections import SIRConfig
from ..training.context import HeadSpec, StepContext
from ..training.evaluation import mean_logits
from ..training.phase import Step
from .base import Outputs, TrainPlugin, register_plugin


def frequency_margins(counts: torch.Tensor) -> torch.Tensor:
    """SIR Sec. FC: b_k = log(n_k / n_max); 0 for the most frequent classes and for classes absent from the step."""
    counts = counts.float()
    present = counts > 0
    b = torch.zeros_like(counts)
    b[present] = torch.log(counts[present] / counts.max())
    return b


def merged_old_margins(counts: torch.Tensor, num_old: int) -> torch.Tensor:
    """FC's margins over an auxiliary head's classes, every old class as one, then each new class (DER's)."""
    return frequency_margins(torch.cat([counts[:num_old].sum().view(1), counts[num_old:]]))


def attenuation_weights(ages: torch.Tensor, gamma: float) -> torch.Tensor:
    """SIR Sec. CA: w_k = gamma ** max(a_k - 1, 0): full compensation for new and one-step-old classes."""
    return gamma ** (ages - 1).clamp(min=0).float()


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean and diagonal standard deviation of (already normalized) features."""
    d = features.shape[1]
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1).unsqueeze(1)
    sums = torch.zeros(num_classes, d, device=features.device).index_add_(0, labels, features)
    squares = torch.zeros(num_classes, d, device=features.device).index_add_(0, labels, features * features)
    mean = sums / counts
    var = (squares / counts - mean * mean).clamp(min=0)
    return mean, var.sqrt()


def wasserstein_similarity(mean: torch.Tensor, std: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """SIR Sec. IT: S = exp(-W2^2 / T_d), W2^2 = ||mu_k - mu_j||^2 + ||sigma_k - sigma_j||^2,
    T_d the median distance over the old/new pairs (``cross``)."""
    d = torch.cdist(mean, mean).pow(2) + torch.cdist(std, std).pow(2)
    pairs = d[cross]
    temperature = pairs.median().clamp(min=1e-12) if pairs.numel() else torch.tensor(1.0, device=d.device)
    return torch.exp(-d / temperature)


class SIR:
    """Per-step state (margins, similarity) and the per-batch logit adjustment."""

    def __init__(self, cfg: SIRConfig):
        self.cfg = cfg
        self.offset: torch.Tensor | None = None
        self.it_margin: torch.Tensor | None = None
        self.similarity: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def begin_step(
        self,
        step_index: int,
        num_old: int,
        num_seen: int,
        train_labels: torch.Tensor,
        class_steps: torch.Tensor,
        embed: Callable[[], torch.Tensor] | None,
    ) -> None:
        """``train_labels``: labels of the step's whole training set (new data + memory);
        ``class_steps[k]``: the step that introduced class k; ``embed()``: features of that
        training set under the frozen old model (only called when IT is on and old classes exist)."""
        cfg = self.cfg
        self.counts = torch.bincount(train_labels, minlength=num_seen)[:num_seen]
        ages = step_index - class_steps[:num_seen].to(train_labels.device)
        self.offset = cfg.fc * attenuation_weights(ages, cfg.ca) * frequency_margins(self.counts)
        self.it_margin = self.similarity = None
        if cfg.it > 0 and num_old > 0 and embed is not None:
            is_new = torch.arange(num_seen, device=train_labels.device) >= num_old
            cross = is_new[:, None] != is_new[None, :]
            mean, std = class_gaussians(embed(), train_labels, num_seen)
            self.similarity = wasserstein_similarity(mean, std, cross)
            self.it_margin = cfg.it * self.similarity * cross

    def adjust(self, logits: torch.Tensor, y: torch.Tensor, scale: torch.Tensor | float = 1.0, head: str = "linear") -> torch.Tensor:
        """Training logits z~. ``scale`` converts IT's margins into the logits' units when the
        method scales cosine similarities (lambda is given before the scale). ``head`` is the
        method's kind of classifier: on a ``cosine`` head with ``cosine_scale`` set, FC's offsets
        are in similarity units too; on a ``sigmoid`` head with ``sigmoid: weight`` they become
        sample weights (:meth:`sample_weights`) instead of offsets."""
        assert self.offset is not None, "begin_step sets the step's offsets"
        z = logits
        if head == "cosine" and self.cfg.cosine_scale is not None:
            z = z + self.offset.to(logits.dtype) * (scale / self.cfg.cosine_scale)
        elif not (head == "sigmoid" and self.cfg.sigmoid == "weight"):
            z = z + self.offset.to(logits.dtype)
        if self.it_margin is not None:
            z = z + self.it_margin[y].to(logits.dtype) * scale
        return z

    def sample_weights(self, y: torch.Tensor) -> torch.Tensor | None:
        """Sigmoid heads with ``sigmoid: weight``: FC (with CA) as a re-weighting, exp(-tau w_y b_y) =
        (n_max / n_y)^(tau w_y), normalized to mean 1 over the batch so the step size is unchanged.
        Independent sigmoids have no softmax prior to correct; an offset there is an absolute shift
        the network undoes on every input (docs/sir.md)."""
        if self.cfg.sigmoid != "weight":
            return None
        assert self.offset is not None, "begin_step sets the step's offsets"
        w = torch.exp(-self.offset[y])
        return w / w.mean()

    def top_pairs(self, num_old: int, k: int = 5) -> list[tuple[int, int, float]]:
        """The k most similar (old, new) class pairs: the likeliest confusions IT separates."""
        if self.similarity is None:
            return []
        block = self.similarity[:num_old, num_old:]
        values, flat = block.flatten().topk(min(k, block.numel()))
        return [(int(i) // block.shape[1], num_old + int(i) % block.shape[1], float(v)) for v, i in zip(values, flat)]


@register_plugin("sir", SIRConfig)
class SIRPlugin(TrainPlugin):
    """SIR wired into training: per step from the step's data, per batch on the method's head."""

    label = "SIR"

    def __init__(self, cfg: SIRConfig):
        super().__init__(cfg)
        self.sir = SIR(cfg)
        self.head = HeadSpec()
        self.aux_offset: torch.Tensor | None = None  # FC (without CA) on the auxiliary head the method names
        self.log: logging.Logger = logging.getLogger(__name__)

    def begin_step(self, ctx: StepContext, head: HeadSpec) -> None:
        step, sir = ctx.step, self.sir
        self.head, self.log = head, ctx.log
        sir.begin_step(step.index, step.num_old, step.num_seen, ctx.step_labels, ctx.class_steps, lambda: ctx.embed_indices(ctx.indices))
        self.aux_offset = sir.cfg.fc * merged_old_margins(ctx.class_counts(), step.num_old) if head.aux and step.num_old else None
        assert sir.counts is not None and sir.offset is not None, "SIR.begin_step sets both"
        ctx.log.info("SIR: counts %s -> training offsets %s", sir.counts.tolist()[: step.num_seen], [round(v, 3) for v in sir.offset.tolist()])
        pairs = sir.top_pairs(step.num_old)
        if not pairs or not ctx.is_main:
            return
        assert sir.similarity is not None, "pairs come from the similarity"
        names = ctx.class_names
        ctx.log.info(
            "SIR IT: most similar old/new pairs in the old model: %s",
            ", ".join(f"{names[a]} ~ {names[b]} ({v:.2f})" for a, b, v in pairs),
        )
        entry = {"similarity": sir.similarity.cpu(), "num_old": step.num_old, "class_names": names[: step.num_seen]}
        ctx.save_artifact("sir_similarity.pt", lambda saved: {**(saved or {}), step.index: entry})

    def adjust(self, out: Outputs, y: torch.Tensor) -> Outputs:
        head = self.head
        scale = out[head.scale] if head.scale else 1.0
        out[head.logits] = self.sir.adjust(out[head.logits], y, scale, head.kind)
        weights = self.sir.sample_weights(y) if head.kind == "sigmoid" else None
        if weights is not None:
            out["sample_weight"] = weights
        if self.aux_offset is not None and head.aux in out:
            out[head.aux] = out[head.aux] + self.aux_offset
        return out

    def record(self, logits: torch.Tensor, labels: torch.Tensor, step: Step) -> dict[str, Any]:
        """The old/new logit bias as SIR's training adjustment leaves it (the bias it rectifies)."""
        old, new = mean_logits(self.sir.adjust(logits, labels, head=self.head.kind), step.start)
        self.log.info("step %d: bias old - new %.3f with SIR's training adjustment", step.index, old - new)
        return {"logit_bias_old_minus_new_sir_view": old - new}

    def step_record(self, scale: float) -> dict[str, Any]:
        """What SIR applied, in logit units at the head's final scale: ``sir_offset``, each class's
        FC offset after CA (and after ``cosine_scale``'s conversion on a cosine head) or, on a
        sigmoid head with ``sigmoid: weight``, ``sir_weight``, each class's sample weight before the
        batch's normalization; ``sir_it``, IT's lambda (0 where IT did not act); ``sir_aux_offset``
        on the method's auxiliary head."""
        sir, kind = self.sir, self.head.kind
        assert sir.offset is not None, "begin_step sets the step's offsets"
        record: dict[str, Any] = {"sir_it": sir.cfg.it * scale if sir.it_margin is not None else 0.0}
        if kind == "sigmoid" and sir.cfg.sigmoid == "weight":
            record["sir_weight"] = torch.exp(-sir.offset).tolist()
        else:
            per_unit = scale / sir.cfg.cosine_scale if kind == "cosine" and sir.cfg.cosine_scale is not None else 1.0
            record["sir_offset"] = (sir.offset * per_unit).tolist()
        if self.aux_offset is not None:
            record["sir_aux_offset"] = self.aux_offset.tolist()
        return record

    def cache_key(self, counts: list[int]) -> Any:
        # SIR is a no-op on a base step whose classes are equally frequent: only then may runs share it
        return dataclasses.asdict(self.sir.cfg) if len(set(counts)) > 1 else None
