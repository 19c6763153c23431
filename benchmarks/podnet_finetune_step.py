"""Step 1 of a finished PODNet run again, from its step-0 checkpoint, with other options (issue 23:
what PODNet's classifier finetuning does at m = 1); writes the step's accuracies and scale.

    python benchmarks/podnet_finetune_step.py RUN_FOLDER CONFIG --set method.finetune_epochs=0 --out FILE.json

``--set`` overrides must keep the base step's config (options that act from the first increment
on, e.g. method.finetune_epochs, method.finetune_frozen_bn); CPU, one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from podnet_base_step import scratch_trainer
from sircil.config import load_config
from sircil.runfolder import RunFolder, atomic_write_json


def rerun_step_one(run: str, config: str, overrides: list[str]) -> dict:
    recorded = json.loads((Path(run) / "metrics.json").read_text())
    cfg = load_config(config, ["train.threads=1", "train.compile=off", "train.device=cpu", *overrides])
    with scratch_trainer(cfg) as trainer:
        state = RunFolder(run).load_checkpoint(0)
        trainer.parts.restore(state)
        trainer.progress.restore(state, 0)
        trainer.run_step(1)
        folder = trainer.folder.path
        step = json.loads((folder / "metrics.json").read_text())["per_step"][-1]
        finetune = [line for line in (folder / "log.txt").read_text().splitlines() if "finetune epoch" in line]
    keys = ("accuracy", "accuracy_old", "accuracy_new", "accuracy_nme", "scale")
    return {"run": run, "overrides": overrides, "step_1": {k: step.get(k) for k in keys},
            "recorded_step_1": {k: recorded["per_step"][1].get(k) for k in keys}, "finetune_epochs": finetune}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = rerun_step_one(args.run, args.config, args.overrides)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["step_1"]))


if __name__ == "__main__":
    main()
