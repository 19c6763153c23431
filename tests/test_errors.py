"""Bad inputs stop a run with a message that names the problem, and lose nothing already done."""

import pytest
import torch

from sircil.runfolder import RunFolder, RunFolderError
from sircil.trainer import run_experiment
from sircil.training.loop import TrainingError

from conftest import fashion_config, make_config


def tiny(**sections):
    raw = fashion_config(**sections)
    raw["data"].update(train_per_class=30, test_per_class=10)
    raw["train"].update(epochs=1, batch_size=16)
    return raw


def test_non_finite_loss_names_step_and_epoch_and_keeps_the_last_checkpoint(fashion_root, tmp_path):
    raw = tiny(train={"base_lr": 0.02, "lr": 1e30})
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1, phase train, epoch 1.*checkpoint of step 0 is kept"):
        run_experiment(make_config(raw), tmp_path)
    assert RunFolder(tmp_path).latest_checkpoint()["step"] == 0


def test_a_changed_config_cannot_resume_an_interrupted_run(fashion_root, tmp_path, monkeypatch):
    from sircil.trainer import Trainer

    original = Trainer.run_step

    def stop_after_base(self, t, partial=None):
        if t == 1:
            raise KeyboardInterrupt
        original(self, t, partial)

    monkeypatch.setattr(Trainer, "run_step", stop_after_base)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_config(tiny()), tmp_path)
    monkeypatch.setattr(Trainer, "run_step", original)
    with pytest.raises(RunFolderError, match="made from another config .*--overwrite"):
        run_experiment(make_config(tiny(memory={"per_class": 5})), tmp_path)


def test_a_checkpoint_of_another_method_is_refused(fashion_root, tmp_path):
    cfg = make_config(tiny())
    folder = RunFolder(tmp_path)
    folder.prepare(cfg.to_yaml(), cfg.hash(), overwrite=False, require_existing=False)
    folder.save_checkpoint(0, {"step": 0, "method": "podnet", "config_hash": "0" * 64})
    with pytest.raises(RunFolderError, match="made by method 'podnet'"):
        run_experiment(cfg, tmp_path)


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"format": 99, "step": 0}, folder.checkpoint_path(0))
    with pytest.raises(RunFolderError, match="checkpoint format 99"):
        folder.latest_checkpoint()


def test_a_run_folder_in_use_by_a_live_process_is_refused(tmp_path):
    import os
    import platform

    from sircil.locks import RunInProgress
    from sircil.runfolder import LOCK_NAME

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK_NAME).write_text(f"{platform.node()} {os.getppid()}")  # a live process: our parent
    with pytest.raises(RunInProgress, match="being run by another process"):
        run_experiment(make_config(tiny()), tmp_path)


def test_a_bad_data_path_fails_before_the_run_folder_is_made(tmp_path):
    from sircil.data.datasets import DatasetError

    raw = fashion_config(data={"root": str(tmp_path / "nowhere")})
    with pytest.raises(DatasetError, match="missing file"):
        run_experiment(make_config(raw), tmp_path / "run")
    assert not (tmp_path / "run").exists()
