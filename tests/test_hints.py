"""Refusals whose hints, followed literally, work (issue 20, item 5): the "start it again" hint of a
study name the storage already holds."""
import shutil

import pytest

from study import storage
from study.spec import StudyError, StudySpec


def test_following_the_start_again_hint_lets_the_study_start(tmp_path):
    from study.tracking import StudyRecorder
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = StudySpec(name="st", preset="smoke", seeds=1, tracking_uri=uri, experiment="iqa-ls",
                     storage=str(tmp_path / "ray_results"), out=None)
    # a study that ran: its trial folder in the storage, its parent and trial runs in MLflow
    (tmp_path / "ray_results" / "st" / "trials" / "s1-seed0").mkdir(parents=True)
    rec = StudyRecorder(uri, "st", "table2")
    rec.open_parent(False, {}, {})
    rec.open_child("s1-seed0", {}, {})
    with pytest.raises(StudyError) as refused:
        storage.check_no_checkpoints(spec, spec.storage)
    line = str(refused.value)
    assert "(the default)" not in line  # --storage was given here
    folder = storage.study_folder(spec.storage, "st")
    assert f"({folder})" in line and "delete that folder and the study's runs in MLflow" in line
    # the hint, literally: that folder, and the study's runs (what the UI's Delete does: soft-delete)
    shutil.rmtree(folder)
    for run_id in [rec.parent_id, *rec.child_ids.values()]:
        rec.client.delete_run(run_id)
    storage.check_no_checkpoints(spec, spec.storage)  # no second refusal from the storage
    again = StudyRecorder(uri, "st", "table2")
    assert again.recorded() is None  # nor from MLflow (study.resume.check_records)
    assert again.open_parent(False, {}, {}) != rec.parent_id  # the study starts anew
