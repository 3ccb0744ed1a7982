"""What a finished trial leaves on disk (issue 20, item 6): one copy of its weights, no previous
checkpoint; resuming it still hands back its final metrics (a fine-tune starting from those weights:
tests/test_finetune.py)."""
from pathlib import Path

import pytest
import torch

from trainables.checkpoints import (CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, PREVIOUS_CHECKPOINT_FILE, load_checkpoint,
                                    recover_checkpoint)
from trainables.config import TrialConfig
from trainables.train import run_trial

FIXTURE = str(Path(__file__).parent / "fixtures" / "cifar10-mini")


def tiny(**kw) -> TrialConfig:
    base = dict(data=FIXTURE, epochs=2, lr_decay_every=1, batch_size=50, subset=200, test_subset=50, device="cpu",
                train_set="mix_all3", regularization="iqa_ls")
    return TrialConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


def weight_files(d: Path) -> list[str]:
    """The files of `d` that hold a copy of the model's weights (a state dict with fc3.weight)."""
    out = []
    for f in sorted(d.glob("*.pt")):
        obj = torch.load(f, map_location="cpu", weights_only=False)
        weights = obj.get("model", obj) if isinstance(obj, dict) else None
        if isinstance(weights, dict) and any(k.endswith("fc3.weight") for k in weights):
            out.append(f.name)
    return out


def test_a_finished_trial_keeps_one_copy_of_its_weights_and_no_previous_checkpoint(tmp_path):
    d = tmp_path / "trial"
    last = run_trial(tiny(), lambda m: None, checkpoint_dir=d)
    assert weight_files(d) == [FINAL_WEIGHTS_FILE]
    assert not (d / PREVIOUS_CHECKPOINT_FILE).exists()
    assert (d / CHECKPOINT_FILE).stat().st_size < (d / FINAL_WEIGHTS_FILE).stat().st_size / 4
    # the checkpoint still reads as a whole one: the final weights, epoch and metrics
    state = load_checkpoint(d)
    final = torch.load(d / FINAL_WEIGHTS_FILE)
    assert state["epoch"] == 2 and all(torch.equal(state["model"][k], final[k]) for k in final)
    assert state["metrics"]["acc_mean_all"] == last["acc_mean_all"]
    # a resume of the finished trial trains nothing and hands back its final metrics
    again: list[dict] = []
    back = run_trial(tiny(), again.append, checkpoint_dir=d)
    assert again == [] and back["acc_mean_all"] == last["acc_mean_all"]
    assert weight_files(d) == [FINAL_WEIGHTS_FILE]


def test_a_finished_checkpoint_without_its_weights_is_set_aside_not_trusted(tmp_path):
    d = tmp_path / "trial"
    run_trial(tiny(epochs=1), lambda m: None, checkpoint_dir=d)
    (d / FINAL_WEIGHTS_FILE).unlink()
    state, note = recover_checkpoint(d)
    assert state is None and FINAL_WEIGHTS_FILE in note and note.endswith("the trial restarts from scratch")


# ------------------------------------------------------------------ the MLflow page a study opens with
def test_the_parent_note_starts_with_results_and_keeps_the_plan_and_links_open_model_training(tmp_path):
    import json

    from study import tracking as T
    rec = T.StudyRecorder(f"sqlite:///{tmp_path}/mlflow.db", "st", "table2")
    rec.open_parent(False, {}, {}, description="Started with:\n\n    python -m study.table2\n\nPlan:\n\n    9 trials")
    for s, acc in ((1, 0.1), (9, 0.2)):
        key = f"s{s}-seed0"
        rec.open_child(key, {}, {"strategy": s, "regularization": "onehot", "train_set": "pristine"})
        rec.client.log_metric(rec.child_ids[key], "acc_mean_all", acc)
        rec.finish_child(key, [])
    rec.close_parent()
    rec.close_parent()  # a second close (a resume) replaces the table, never stacks it
    note = rec.client.get_run(rec.parent_id).data.tags["mlflow.note.content"]
    assert note.startswith(T.RESULTS_HEAD) and note.count(T.RESULTS_HEAD) == 1
    assert "no interval can be given" in note and "| s9 onehot pristine | 1/1 | - | - | 0.200 |" in note
    assert note.index("0.200") < note.index("Plan:") and note.endswith("    9 trials")
    tags = rec.client.get_experiment(rec.experiment_id).tags
    assert json.loads(tags[T.VIEW_TAG])["selectedColumns"] == ["metrics.`acc_pristine`",
                                                               "metrics.`acc_mean_distorted`", "metrics.`acc_mean_all`"]
    line = T.ui_command(rec.uri, rec.experiment_id, rec.parent_id)
    assert line.count("workflowType=machine_learning") == 2 and f"viewStateShareKey={T.VIEW_KEY}" in line
    assert f"/runs/{rec.parent_id}?workflowType=machine_learning" in line
