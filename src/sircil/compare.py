"""``sircil compare RUN...``: runs side by side, step by step (the main job's table and figure).

Per step and run: accuracy on every class seen, on the old and on the new classes, and the old -
new mean-logit bias on the test set (the imbalance SIR rectifies); then the average incremental
and last accuracy. Writes compare.md and compare.png.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml

from .report import ReportError, method_label
from .runfolder import atomic_write_bytes, atomic_write_text

# (metrics key, column name, figure title)
PANELS = [("accuracy", "acc", "accuracy, all classes seen (%)"), ("accuracy_old", "old", "old classes (%)"),
          ("accuracy_new", "new", "new classes (%)"), ("logit_bias_old_minus_new", "bias", "logit bias old - new")]


def load(folder: Path) -> tuple[str, dict[str, Any]]:
    metrics_file, config_file = folder / "metrics.json", folder / "config.yaml"
    if not metrics_file.is_file() or not config_file.is_file():
        raise ReportError(f"{folder} is not a run folder with results (metrics.json and config.yaml)")
    return method_label(yaml.safe_load(config_file.read_text())), json.loads(metrics_file.read_text())


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(runs: list[tuple[str, dict[str, Any]]]) -> str:
    names = [name for name, _ in runs]
    lines = [
        "# sircil compare", "",
        "Per step, test set: accuracy on every class seen (acc), on the old and new classes, and the old - new mean-logit bias.", "",
        "| step | " + " | ".join(f"{column} {n}" for _, column, _ in PANELS for n in names) + " |",
        "|---|" + "---|" * (len(PANELS) * len(names)),
    ]
    steps = max(len(m["per_step"]) for _, m in runs)
    for t in range(steps):
        cells = [_cell(m["per_step"][t].get(key), 2 if key.startswith("logit") else 1) if t < len(m["per_step"]) else "-"
                 for key, _, _ in PANELS for _, m in runs]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| run | average incremental accuracy | last accuracy | forgetting | finished |", "|---|---|---|---|---|"]
    for name, m in runs:
        lines.append(f"| {name} | {_cell(m.get('average_incremental_accuracy'))} | {_cell(m.get('last_accuracy'))} | "
                     f"{_cell(m.get('forgetting'))} | {'yes' if m.get('finished') else 'no'} |")
    return "\n".join(lines) + "\n"


def figure(runs: list[tuple[str, dict[str, Any]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    for ax, (key, _, title) in zip(axes, PANELS):
        for name, m in runs:
            points = [(r["step"], r[key]) for r in m["per_step"] if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_comparison(folders: list[str | Path], out: str | Path) -> Path:
    if len(folders) < 2:
        raise ReportError("sircil compare needs at least two run folders")
    runs = [load(Path(f)) for f in folders]
    labels = [name for name, _ in runs]
    runs = [(f"{name} ({Path(f).name})" if labels.count(name) > 1 else name, m) for (name, m), f in zip(runs, folders)]
    out = Path(out)
    atomic_write_text(out / "compare.md", markdown(runs))
    atomic_write_bytes(out / "compare.png", figure(runs))
    return out
