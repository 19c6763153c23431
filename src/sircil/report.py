"""``sircil report FOLDER...``: tables (mean +- std over seeds) and the paper's figure from run folders.

Every run folder below the FOLDERs (a ``metrics.json`` of a finished run beside its
``config.yaml``) is one point; runs differing only in their seed are averaged. A seed of one
setting found twice (grids continued on another machine) counts once: the first folder's run
is kept and the report names the one left out. A run's
method label follows the paper: the method's name, SIR_P / SIR_D for PODNet / DER with
SIR, ``<name>+SIR`` otherwise (``+SIR[FC+IT]`` when only some parts are on); every other
registered plug-in that is on adds its own part (``+LA`` with logit adjustment), so a run with a
plug-in is never taken for a second run of the plain method.
"""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import METHOD_CONFIGS, PLUGIN_CONFIGS, UNUSED_BY_METHOD
from .methods import METHODS
from .plugins import PLUGINS
from .paper import PAPER_AVERAGE_INCREMENTAL_ACCURACY
from .runfolder import atomic_write_bytes, atomic_write_text

NAMES = {"finetune": "Finetune", "icarl": "iCaRL", "ucir": "UCIR", "podnet": "PODNet", "der": "DER", "wa": "WA", "ssil": "SS-IL", "bic": "BiC", "dde": "DDE"}
WITH_SIR = {"podnet": "SIR_P", "der": "SIR_D"}
# a method that trains another's base step is that method with parts added from the first increment (DDE: UCIR)
BUILT_ON = {NAMES[name]: NAMES[cls.base_step_of] for name, cls in METHODS.items() if cls.base_step_of}
ORDER = ["Finetune", "Finetune+SIR", "Finetune+LA", "iCaRL", "iCaRL+SIR", "UCIR", "UCIR+SIR", "DDE", "PODNet", "SIR_P", "DER", "SIR_D", "WA", "BiC", "SS-IL"]


class ReportError(RuntimeError):
    """Nothing to report from the folder given; the message says what was expected."""


# Method options that make a variant of the method worth its own row (changed from their defaults)
VARIANT_KEYS = {"wa": ("weight_clipping", "kd_weight"), "podnet": ("finetune_epochs", "finetune_frozen_bn")}


def variant_suffix(method: dict[str, Any]) -> str:
    keys = VARIANT_KEYS.get(method["name"], ())
    if not keys:
        return ""
    defaults = dataclasses.asdict(METHOD_CONFIGS[method["name"]]())
    return "".join(f"({key}={method[key]})" for key in keys if key in method and method[key] != defaults[key])


def method_label(config: dict[str, Any]) -> str:
    """The method's name and variant, then a part for each plug-in that is on: SIR's last (the paper's names)."""
    name = config["method"]["name"]
    label = NAMES.get(name, name) + variant_suffix(config["method"])
    for section, plugin in PLUGINS.items():
        options = config.get(section) or {}
        if section != "sir" and options.get("enabled"):
            defaults = dataclasses.asdict(PLUGIN_CONFIGS[section]())
            label += plugin.report_label({**defaults, **options}, defaults)  # an option left out of the file is at its default
    sir = config.get("sir") or {}
    return sir_label(label, name, sir) if sir.get("enabled") else label


def sir_label(label: str, name: str, sir: dict[str, Any]) -> str:
    """SIR_P / SIR_D for the paper's PODNet and DER with the whole of SIR, else ``+SIR`` with the
    parts that are on and the head rules changed from their defaults."""
    defaults = dataclasses.asdict(PLUGIN_CONFIGS["sir"]())
    sir = {**defaults, **sir}  # a part left out of the file is at its default
    parts = [p for p, on in (("FC", sir["fc"] > 0), ("CA", sir["ca"] < 1), ("IT", sir["it"] > 0)) if on]
    unused = UNUSED_BY_METHOD.get(name, ("sir.cosine_scale", "sir.sigmoid"))  # head rules that cannot act on this method
    rules = "".join(f"({key}={sir[key]})" for key in ("cosine_scale", "sigmoid") if f"sir.{key}" not in unused and sir[key] != defaults[key])
    if len(parts) == 3:
        plain = label == NAMES.get(name, name) and not rules
        return WITH_SIR.get(name, f"{label}+SIR") if plain else f"{label}+SIR{rules}"
    return f"{label}+SIR[{'+'.join(parts) or 'none'}]{rules}"


@dataclass
class Point:
    """All seeds of one (dataset, steps, method, memory) cell."""

    accuracy: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    forgetting: list[float] = field(default_factory=list)
    nme: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(folders: list[Path]) -> tuple[dict[tuple[str, int], dict[str, dict[int, Point]]], dict[str, Any]]:
    """Finished runs below ``folders``, grouped as panel -> method -> memory -> Point; plus cost
    totals, runs per device and the duplicates left out."""
    panels: dict[tuple[str, int], dict[str, dict[int, Point]]] = defaultdict(lambda: defaultdict(dict))
    cost: dict[str, Any] = {"runs": 0, "unfinished": 0, "device_seconds": 0.0, "devices": defaultdict(int), "duplicates": []}
    kept: dict[tuple, Path] = {}
    for metrics_file in [f for folder in folders for f in sorted(folder.rglob("metrics.json"))]:
        config_file = metrics_file.parent / "config.yaml"
        if not config_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        if not metrics.get("finished"):
            cost["unfinished"] += 1
            continue
        config = yaml.safe_load(config_file.read_text())
        memory = config["memory"]["per_class"]
        if memory is None:
            memory = metrics["per_step"][-1].get("memory_per_class") or 0
        key = (config["data"]["dataset"], int(config["scenario"]["steps"]))
        label = method_label(config)
        identity = (*key, label, int(memory), config["seed"])
        if identity in kept:
            cost["duplicates"].append((metrics_file.parent, kept[identity]))
            continue
        kept[identity] = metrics_file.parent
        point = panels[key][label].setdefault(int(memory), Point())
        point.accuracy.append(metrics["average_incremental_accuracy"])
        point.last.append(metrics["last_accuracy"])
        point.forgetting.append(metrics["forgetting"])
        if "nme" in metrics:
            point.nme.append(metrics["nme"]["average_incremental_accuracy"])
        point.seeds.append(config["seed"])
        cost["runs"] += 1
        cost["device_seconds"] += sum(r.get("wall_seconds", 0.0) for r in metrics["per_step"])
        provenance = metrics_file.parent / "provenance.json"
        device = json.loads(provenance.read_text()).get("device_name") if provenance.is_file() else None
        cost["devices"][device or "unknown device"] += 1
    return panels, cost


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; 1.96 beyond 30.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t975(df: int) -> float:
    if df in T975:
        return T975[df]
    return 2.086 if df <= 20 else 2.042 if df <= 30 else 1.96


def paired_difference(treated: Point, control: Point) -> tuple[float, float, int] | None:
    """Mean of treated - control over the seeds both have, with the half-width of its 95% t-interval
    (seeds share base steps and memory, so the pairing removes most of the seed-to-seed noise)."""
    common = sorted(set(treated.seeds) & set(control.seeds))
    if not common:
        return None
    by_seed_t, by_seed_c = dict(zip(treated.seeds, treated.accuracy)), dict(zip(control.seeds, control.accuracy))
    diffs = [by_seed_t[s] - by_seed_c[s] for s in common]
    mean, std = mean_std(diffs)
    half = t975(len(diffs) - 1) * std / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return mean, half, len(diffs)


def _difference_cell(d: tuple[float, float, int] | None) -> str:
    if d is None:
        return "-"
    mean, half, n = d
    return f"{mean:+.1f} (n=1)" if n == 1 else f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"


def family(label: str) -> str:
    """The base method of a label: SIR_P -> PODNet, SIR_D -> DER, UCIR+SIR -> UCIR, Finetune+LA -> Finetune,
    DDE -> UCIR (DDE is UCIR with its two parts added)."""
    base = {v: NAMES[k] for k, v in WITH_SIR.items()}.get(label, label)
    return BUILT_ON.get(base, base.split("+")[0].split("(")[0])


def _sorted_methods(methods: list[str]) -> list[str]:
    return sorted(methods, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown(panels, cost, paper: bool) -> str:
    lines = [
        "# sircil report",
        "",
        f"{cost['runs']} finished runs ({cost['unfinished']} unfinished left out); "
        f"{cost['device_seconds'] / 3600:.2f} device-hours in total on "
        + ", ".join(f"{device} ({n} runs)" for device, n in sorted(cost["devices"].items())) + ".",
        "Cells: mean ± sample standard deviation over seeds (no ± with a single seed).",
    ]
    lines += [f"Left out, a second run of the same setting and seed: {left} (kept: {kept})." for left, kept in cost["duplicates"]]
    for (dataset, steps) in sorted(panels):
        methods = panels[(dataset, steps)]
        memories = sorted({m for points in methods.values() for m in points}, reverse=True)
        reference = PAPER_AVERAGE_INCREMENTAL_ACCURACY.get((dataset, steps), {}) if paper else {}
        tables = [("average incremental accuracy", "accuracy"), ("last accuracy", "last"), ("forgetting", "forgetting")]
        if any(p.nme for points in methods.values() for p in points.values()):
            tables.append(("average incremental accuracy, nearest-mean-of-exemplars classifier", "nme"))
        for title, attr in tables:
            lines += ["", f"## {dataset}, {steps} steps: {title}", "", "| method | seeds | " + " | ".join(f"m={m}" for m in memories) + " |"]
            lines.append("|---|---|" + "---|" * len(memories))
            for method in _sorted_methods(list(methods)):
                points = methods[method]
                if attr == "nme" and not any(p.nme for p in points.values()):
                    continue
                seeds = max((len(p.seeds) for p in points.values()), default=0)
                row = [_cell(getattr(points[m], attr)) if m in points else "-" for m in memories]
                lines.append(f"| {method} | {seeds} | " + " | ".join(row) + " |")
                if attr == "accuracy" and method in reference:
                    lines.append(f"| {method} (paper) | | " + " | ".join(f"{reference[method][m]:.1f}" if m in reference[method] else "-" for m in memories) + " |")
        pairs = [(m, b) for m in _sorted_methods(list(methods)) for b in [family(m)] if b != m and b in methods and "[" not in m]
        if pairs:
            lines += [
                "", f"## {dataset}, {steps} steps: each rectification minus its base method, average incremental accuracy, paired by seed",
                "", "Mean difference over the seeds both have, [95% t-interval]; an interval that contains 0 is no evidence of an effect.",
                "", "| method | " + " | ".join(f"m={m}" for m in memories) + " |", "|---|" + "---|" * len(memories),
            ]
            for treated, base in pairs:
                cells = [
                    _difference_cell(paired_difference(methods[treated][m], methods[base][m]))
                    if m in methods[treated] and m in methods[base] else "-" for m in memories
                ]
                lines.append(f"| {treated} - {base} | " + " | ".join(cells) + " |")
        lines += _drop_section(dataset, steps, methods, memories)
    return "\n".join(lines) + "\n"


def _drop_section(dataset: str, steps: int, methods: dict[str, dict[int, Point]], memories: list[int]) -> list[str]:
    """The paper's headline quantity: the average incremental accuracy lost from the largest memory to the smallest."""
    big, small = memories[0], memories[-1]
    if big == small:
        return []
    lines = ["", f"## {dataset}, {steps} steps: the drop from m={big} to m={small}, average incremental accuracy, paired by seed",
             "", "| method | drop |", "|---|---|"]
    for method in _sorted_methods([m for m, points in methods.items() if big in points and small in points]):
        lines.append(f"| {method} | {_difference_cell(paired_difference(methods[method][big], methods[method][small]))} |")
    return lines


def figure(panels, paper: bool) -> bytes:
    """One panel per dataset x steps: average incremental accuracy against memory per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(panels)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.0 * len(keys), 4.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_methods = _sorted_methods(list({m for k in keys for m in panels[k]}))
    families = list(dict.fromkeys(family(m) for m in all_methods))
    color_of = {m: colors[families.index(family(m)) % len(colors)] for m in all_methods}
    with_sir = {m: family(m) != m for m in all_methods}  # a method with SIR: same colour, dash-dot, squares
    for ax, key in zip(axes[0], keys):
        methods = panels[key]
        memories = sorted({m for points in methods.values() for m in points}, reverse=True)
        reference = PAPER_AVERAGE_INCREMENTAL_ACCURACY.get(key, {}) if paper else {}
        memories = sorted(set(memories) | {m for r in reference.values() for m in r}, reverse=True)
        position = {m: i for i, m in enumerate(memories)}
        for method in _sorted_methods(list(methods)):
            points = methods[method]
            ms = [m for m in memories if m in points]
            stats = [mean_std(points[m].accuracy) for m in ms]
            ax.errorbar(
                [position[m] for m in ms], [s[0] for s in stats], yerr=[s[1] for s in stats],
                marker="s" if with_sir[method] else "o", linestyle="-." if with_sir[method] else "-",
                capsize=3, color=color_of[method], label=method,
            )
            if method in reference:
                rm = [m for m in memories if m in reference[method]]
                ax.plot([position[m] for m in rm], [reference[method][m] for m in rm], ":", marker="x",
                        color=color_of[method], alpha=0.7, label=f"{method} (paper)")
        ax.set_xticks(range(len(memories)), [str(m) for m in memories])
        ax.set_xlabel("memory per class (exemplars)")
        ax.set_ylabel("average incremental accuracy (%)")
        ax.set_title(f"{key[0]}, {key[1]} steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_report(folders: str | Path | list[str | Path], out: str | Path | None = None, paper: bool = False) -> Path:
    """Writes report.md and figure.png into ``out`` (default: the only or first folder)."""
    paths = [Path(f) for f in (folders if isinstance(folders, list) else [folders])]
    for folder in paths:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass a sweep folder or any folder holding run folders")
    out = Path(out) if out else paths[0]
    panels, cost = collect(paths)
    if not panels:
        raise ReportError(f"no finished run (metrics.json + config.yaml) below {', '.join(map(str, paths))}")
    atomic_write_text(out / "report.md", markdown(panels, cost, paper))
    atomic_write_bytes(out / "figure.png", figure(panels, paper))
    return out
