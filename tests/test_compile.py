"""The training step compiles: every method's loss, with and without SIR, is one graph with no
break (a break is where the step would wait on the host), and the compiled step computes what
the eager one does (losses, logits, gradients on the same batches).

Tracing a step costs about a second per residual block on the CPU, and whether it is one graph
depends on the methods' and plug-ins' code, not on the depth: the runs here use ResNet-8 (one
block per stage, registered for these tests only) on a dozen images per class."""

import copy
from pathlib import Path

import pytest
import torch
import torch._dynamo

from sircil.config import load_config
from sircil.models import BACKBONES, CifarResNet
from sircil.runfolder import RunFolder, quiet_logger
from sircil.trainer import Trainer
from sircil.training.loop import TrainStep, resolve_compile
from sircil.training.phase import Phase

from conftest import FASHION_ROOT

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    f"data.root={FASHION_ROOT}", "data.train_per_class=12", "data.test_per_class=4", "scenario.steps=1",
    "train.epochs=1", "train.base_epochs=1", "train.milestones=[]", "train.base_milestones=null", "train.batch_size=16",
    "train.device=cpu", "train.threads=1", "model.backbone=resnet8",
]
# The SIR variants: each runs its method's own losses and, on top, SIR's logit adjustment.
RECIPES = {
    "finetune_sir": [],
    "icarl_sir": [],
    "ucir_sir": [],
    "sir_p": ["method.finetune_epochs=1"],
    "sir_d": ["method.warmup_epochs=0", "method.balanced_epochs=1", "method.balanced_milestones=[]", "method.sir_aux=true"],
    # the other rectifications: WA's clipping runs outside the step, BiC's stage 2 is a phase of its own
    "wa": [],
    "ssil": [],
    "bic": ["method.bias_epochs=1", "method.bias_milestones=[]"],  # stage 2's graph is the same at any length
    "dde": ["method.top_k=2"],  # the neighbours ride in the batch; the momentum embedding updates in place
}


@pytest.fixture(autouse=True)
def resnet8(monkeypatch):
    """ResNet-8 as a backbone name for the configs above (the smallest shipped one is ResNet-20)."""
    monkeypatch.setitem(BACKBONES, "resnet8", lambda in_channels, **options: CifarResNet(8, in_channels, **options))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_phase_of_every_method_is_one_graph(fashion_root, recipe, tmp_path, monkeypatch):
    cfg = load_config(ROOT / "configs" / "fashion_mnist" / f"{recipe}_b2_4steps.yaml", SMALL + RECIPES[recipe])
    trainer = Trainer(cfg, RunFolder(tmp_path), quiet_logger(0))
    fit = trainer.fitter.fit
    explained = []

    def explain_then_fit(phase, step, **kwargs):
        idx = phase.indices[: cfg.train.batch_size]
        x = trainer.fitter.augment(trainer.train_split.images[idx], torch.Generator().manual_seed(0))
        report = torch._dynamo.explain(TrainStep(trainer.method.model, phase.loss_fn))(x, trainer.train_split.labels[idx])
        explained.append((step.index, phase.name, report.graph_count, report.graph_break_count, report.break_reasons))
        return fit(phase, step, **kwargs)

    monkeypatch.setattr(trainer.fitter, "fit", explain_then_fit)
    trainer.run()
    assert {s for s, *_ in explained} == {0, 1}
    for step, phase, graphs, breaks, reasons in explained:
        assert (graphs, breaks) == (1, 0), (step, phase, reasons)


class _Stop(Exception):
    pass


def main_phase_of_step_1(trainer: Trainer, monkeypatch) -> Phase:
    """Step 1's main phase, as ``fit`` would receive it, after an eager base step: the phase then
    has everything a method adds from step 1 on (the old model's distillation, DER's frozen
    extractor and auxiliary classifier, SIR's counts, ages and IT pairs)."""
    trainer.run_step(0)
    captured = []

    def capture(phase, step, **kwargs):
        captured.append(phase)
        raise _Stop

    monkeypatch.setattr(trainer.fitter, "fit", capture)
    with pytest.raises(_Stop):
        trainer.run_step(1)
    return captured[0]


def step_losses_and_grads(trainer: Trainer, phase: Phase, batches, state) -> list[tuple[dict, torch.Tensor, dict]]:
    """What one training step computes, as ``Fitter.fit`` runs it (the phase's runner from
    ``Fitter.step_runner``, its terms summed, one backward), on each batch from the same
    parameters and BatchNorm statistics: (loss terms, logits, gradient of each trained parameter)."""
    model = trainer.method.model
    runner = trainer.fitter.step_runner(phase)
    named = {id(p): name for name, p in model.named_parameters()}
    params = {named[id(p)]: p for group in phase.param_groups for p in group["params"]}
    out = []
    for x, y in batches:
        model.load_state_dict(state)
        (phase.train_mode or model.train)()
        terms, logits = runner(x, y)
        loss = torch.stack([v.float() for v in terms.values()]).sum()
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}
        out.append(({k: v.detach() for k, v in terms.items()}, logits.detach(), grads))
    model.load_state_dict(state)
    return out


# Float32 tolerances, compiled against eager (relative, in norm). Inductor fuses and reorders
# the float32 sums of the same graph, so every value differs by rounding. Measured on these
# setups and Finetune + SIR's on ResNet-20 (48 batches each): loss terms, logits and the
# classifiers' gradients (no ReLU between them and the loss) differ by at most 4e-6 (on
# ResNet-8, 1e-5); hence 1e-4, and 10x below a loss 0.1% off. The feature extractors'
# gradients differ more, and not smoothly: about one of the ~2 million ReLU inputs of a batch
# lies within rounding of zero, rounding tips it one way in one step and the other way in the
# other, and that unit's gradient is dropped in one only (float64 eager differs from float32
# eager as much). That moves an extractor tensor's gradient by up to 3e-2 (median 5e-3) and
# the whole extractor gradient by up to 1.5e-2 (median 3e-3; on ResNet-8, 1.2e-2 and 1e-2 at
# most); hence 0.1 and 5e-2, over 3x the largest seen and still far below what a wrong,
# missing or detached gradient path gives (order 1). The inputs are random, not images: an
# image's background of equal pixels gives equal pre-activations over whole regions, and one
# tipped value there drops thousands of units' gradients at once.
RTOL_OUTPUTS = 1e-4
RTOL_EXTRACTOR_TENSOR = 1e-1
RTOL_EXTRACTOR = 5e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def parity_mismatches(eager, compiled, extractor: set[str]) -> list[str]:
    """Every difference between the compiled and the eager step beyond the tolerances above."""
    problems = []
    for b, ((terms_e, logits_e, grads_e), (terms_c, logits_c, grads_c)) in enumerate(zip(eager, compiled)):
        if terms_c.keys() != terms_e.keys() or grads_c.keys() != grads_e.keys():
            problems.append(
                f"batch {b}: loss terms {sorted(terms_c)} compiled vs {sorted(terms_e)} eager; "
                f"parameters with a gradient in one step only: {sorted(grads_c.keys() ^ grads_e.keys())}"
            )
            continue
        for k in terms_e:
            if abs(float(terms_c[k]) - float(terms_e[k])) > RTOL_OUTPUTS * abs(float(terms_e[k])) + 1e-7:
                problems.append(f"batch {b}: loss term {k} {float(terms_c[k]):.7g} compiled vs {float(terms_e[k]):.7g} eager")
        if rel(logits_c, logits_e) > RTOL_OUTPUTS:
            problems.append(f"batch {b}: logits differ by {rel(logits_c, logits_e):.2e} relative")
        for name, g in grads_e.items():
            bound = RTOL_EXTRACTOR_TENSOR if name in extractor else RTOL_OUTPUTS
            if rel(grads_c[name], g) > bound:
                problems.append(f"batch {b}: gradient of {name} differs by {rel(grads_c[name], g):.2e} relative (bound {bound:g})")
        names = sorted(extractor & grads_e.keys())
        whole = rel(torch.cat([grads_c[n].flatten() for n in names]), torch.cat([grads_e[n].flatten() for n in names]))
        if whole > RTOL_EXTRACTOR:
            problems.append(f"batch {b}: the feature extractors' gradient differs by {whole:.2e} relative (bound {RTOL_EXTRACTOR:g})")
    return problems


def scaled(results, factor: float):
    return [({k: v * factor for k, v in terms.items()}, logits * factor, {k: g * factor for k, g in grads.items()})
            for terms, logits, grads in results]


# PODNet + SIR (POD maps and distillation, the cosine head and its scale, SIR's IT margins
# before the scale) and DER + SIR (a frozen and a trained extractor, the auxiliary loss with
# SIR's FC on it; its main loss, cross-entropy on SIR's logits of a linear classifier, is all
# of Finetune + SIR's). Each compiles one graph (forward and backward): about a minute of
# CPU inductor apiece, the rest of the test takes seconds.
PARITY_RECIPES = ["sir_d", "sir_p"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", PARITY_RECIPES)
def test_compiled_step_matches_eager(fashion_root, recipe, tmp_path, monkeypatch):
    """The compiled step (``train.compile=default``: torch.compile, inductor) computes the eager
    step's losses, logits and gradients on the same fixed batches, from the same parameters.
    Only this is compared: whole runs amplify any rounding into accuracy differences of
    several points on tiny data (benchmarks/compile_parity.py compares full runs)."""
    cfg = load_config(ROOT / "configs" / "fashion_mnist" / f"{recipe}_b2_4steps.yaml", SMALL + RECIPES[recipe] + ["train.compile=off"])
    trainer = Trainer(cfg, RunFolder(tmp_path), quiet_logger(0))
    phase = main_phase_of_step_1(trainer, monkeypatch)
    model = trainer.method.model
    state = copy.deepcopy(model.state_dict())
    extractor = {f"{prefix}.{name}" for prefix, module in model.named_modules() if isinstance(module, CifarResNet)
                 for name, _ in module.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    batches = []
    for b in range(2):
        idx = phase.indices[torch.randperm(phase.indices.numel(), generator=generator)[: cfg.train.batch_size]]
        x = trainer.fitter.augment(trainer.train_split.images[idx], generator)
        batches.append((torch.randn(x.shape, generator=generator), trainer.train_split.labels[idx]))
    eager = step_losses_and_grads(trainer, phase, batches, state)
    assert extractor & eager[0][2].keys() and eager[0][2].keys() - extractor  # extractor and classifier gradients both compared

    trainer.fitter.compile_mode, trainer.fitter.compile_fallback = "default", False  # a compiler failure fails here, never trains eager
    torch._dynamo.utils.counters.clear()
    compiled = step_losses_and_grads(trainer, phase, batches, state)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1 and not torch._dynamo.utils.counters["graph_break"]
    problems = parity_mismatches(eager, compiled, extractor)
    assert not problems, "\n".join(problems)
    # the bounds are tight enough to see a step whose loss is 0.1% off
    assert parity_mismatches(eager, scaled(compiled, 1.001), extractor)


def test_compile_modes_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_compile("auto", cuda) == "reduce-overhead"
    assert resolve_compile("auto", cpu) == "off" and resolve_compile("auto", cuda, processes=2) == "off"
    for mode in ("off", "default", "reduce-overhead"):
        assert resolve_compile(mode, cpu) == resolve_compile(mode, cuda, processes=2) == mode


@pytest.mark.slow
def test_auto_mode_trains_eager_when_the_step_fails_to_compile(fashion_root, tmp_path, monkeypatch):
    """With ``compile: auto`` (here forced to a compiling mode), a compiler failure on the first
    batch costs a warning, not the run; an explicitly chosen mode fails loudly instead."""
    cfg = load_config(ROOT / "configs" / "fashion_mnist" / "finetune_sir_b2_4steps.yaml", SMALL)

    def broken_compile(module, **options):
        def run(*args):
            raise RuntimeError("simulated compiler failure")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    for fallback in (True, False):
        trainer = Trainer(cfg, RunFolder(tmp_path / str(fallback)), quiet_logger(0))
        trainer.fitter.compile_mode, trainer.fitter.compile_fallback = "default", fallback
        warnings = []
        monkeypatch.setattr(trainer.log, "warning", lambda msg, *args: warnings.append(msg % args))
        if fallback:
            trainer.run_step(0)
            assert len(warnings) == 1 and "simulated compiler failure" in warnings[0] and "training it eager" in warnings[0]
            assert len(trainer.progress.records) == 1 and 0 <= trainer.progress.records[0]["accuracy"] <= 100  # trained eager, then evaluated
            assert trainer.folder.checkpoint_path(0).is_file()
        else:
            with pytest.raises(RuntimeError, match="simulated compiler failure"):
                trainer.run_step(0)
