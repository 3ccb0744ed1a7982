"""analysis.schema: the names study.tracking writes are the names the analyses read, and no other
module in study/ or analysis/ spells a tag."""
import ast
import dataclasses
from pathlib import Path

import pytest

from analysis.common import protocol_of, provenance, read_study
from analysis.schema import (DEFAULT_EXPERIMENT, RESUME_SCHEDULE_PARAMS, ROLE_PARENT, TABLE_SCHEDULE_PARAMS,
                             TAG_ERROR, TAG_KIND, TAG_NOTE, TAG_PARENT_RUN, TAG_PREFIX, TAG_REGULARIZATION, TAG_ROLE,
                             TAG_RUN_NAME, TAG_SEED, TAG_SEEDS, TAG_STORAGE, TAG_STRATEGIES, TAG_STRATEGY, TAG_STUDY,
                             TAG_TRAIN_SET, TAG_TRIAL_KEY, find_parent, one_line, planned_seeds)
from trainables.config import TrialConfig

REPO = Path(__file__).resolve().parents[1]


def test_a_study_written_by_the_recorder_is_found_and_read_by_the_analysis(tmp_path, new_store):
    from study import tracking

    uri = f"sqlite:///{new_store(tmp_path / 'mlflow.db')}"
    rec = tracking.StudyRecorder(uri, "names", "table2")
    parent_id = rec.open_parent(False, {"preset": "smoke", "seeds": 2, "strategies": "3", "storage": "/s",
                                        "data_source": "fixture"}, {"epochs": 2}, description="the plan")
    for seed in (0, 1):
        key = f"s3-seed{seed}"
        rec.open_child(key, {"epochs": 2, "subset": 0, "test_subset": 50},
                       {"strategy": 3, "train_set": "mix_blur", "regularization": "iqa_ls", "seed": seed,
                        "protocol": "finetune", "data_source": "fixture"})
        rec.log_epoch(key, {"epoch": 1, "loss": 1.0, "acc_pristine": 0.5})
    rec.finish_child("s3-seed0", [])
    rec.fail_child("s3-seed1", "loss is nan at epoch 1")
    rec.close_parent()

    client, parent, trials = read_study(uri, DEFAULT_EXPERIMENT, "names", None)
    tags = parent.data.tags
    assert parent.info.run_id == parent_id and tags[TAG_ROLE] == ROLE_PARENT
    assert (tags[TAG_STUDY], tags[TAG_KIND], tags[TAG_STRATEGIES], tags[TAG_STORAGE]) == ("names", "table2", "3", "/s")
    assert tags[TAG_NOTE].startswith(tracking.RESULTS_HEAD) and tags[TAG_NOTE].endswith("---\n\nthe plan")
    assert planned_seeds(tags[TAG_SEEDS]) == [0, 1]
    by_key = {t.tags[TAG_TRIAL_KEY]: t for t in trials}
    assert sorted(by_key) == ["s3-seed0", "s3-seed1"]
    done, failed = by_key["s3-seed0"], by_key["s3-seed1"]
    assert done.finished and not failed.finished and failed.tags[TAG_ERROR] == "loss is nan at epoch 1"
    assert (done.tag_int(TAG_STRATEGY), done.tag_int(TAG_SEED), failed.tag_int(TAG_SEED)) == (3, 0, 1)
    assert (done.tags[TAG_TRAIN_SET], done.tags[TAG_REGULARIZATION], protocol_of(done)) == \
        ("mix_blur", "iqa_ls", "finetune")
    assert done.tags[TAG_PARENT_RUN] == parent_id and done.run_name == "s3-seed0"
    prov = provenance(parent, trials)
    assert (prov["data_source"], prov["epochs"], prov["test_subset"], prov["disagree"]) == ("fixture", "2", "50", {})
    # the other ways in: by parent run id, the recorder's own lookup, and study.cifar10c's
    assert find_parent(client, uri, parent_run_id=parent_id).info.run_id == parent_id
    assert tracking.StudyRecorder(uri, "names", "table2").find_parent().info.run_id == parent_id
    pid, finished = tracking.finished_trials(uri, "names")
    assert pid == parent_id and [r["key"] for r in finished] == ["s3-seed0"] and finished[0]["last_step"] == 1


def _code_strings(path: Path):
    """(line, text) of every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_but_the_schema_spells_a_tag_name():
    mlflow_tags = {TAG_PARENT_RUN, TAG_NOTE, TAG_RUN_NAME}
    found = [f"{p.relative_to(REPO)}:{line}: {text!r}"
             for folder in ("study", "analysis") for p in sorted((REPO / folder).glob("*.py"))
             if p.name != "schema.py"
             for line, text in _code_strings(p) if text.startswith(TAG_PREFIX) or text in mlflow_tags]
    assert not found, found


def test_schedule_params_are_trial_config_fields_and_a_table_states_a_part_of_the_recorded_ones():
    names = {f.name for f in dataclasses.fields(TrialConfig)}
    assert set(TABLE_SCHEDULE_PARAMS) <= set(RESUME_SCHEDULE_PARAMS) <= names


@pytest.mark.parametrize("text,seeds", [("2", [0, 1]), ("[2, 0]", [0, 2]), ("0,1,2", [0, 1, 2]), (None, []),
                                        ("", []), ("two", []), ("true", []), ('{"n": 2}', [])])
def test_planned_seeds_reads_the_seeds_tag(text, seeds):
    assert planned_seeds(text) == seeds


def test_one_line_is_the_first_non_blank_line_or_the_type():
    e = ValueError("\n  bad value 'x'  \nTraceback: more")
    assert one_line(e) == "bad value 'x'" and one_line(e, typed=True) == "ValueError: bad value 'x'"
    assert one_line(KeyError()) == one_line(KeyError(), typed=True) == "KeyError"
    assert len(one_line(RuntimeError("y" * 1000), typed=True)) == 300
