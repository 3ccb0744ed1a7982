"""What an analysis writes, and where (issues 20 and 21), against small studies recorded straight into a
temporary MLflow store:

- each `analysis.*` command refuses a study of another kind in one line (exit 2), writing nothing,
  neither into the output folder nor into the study's parent run;
- on a study still running (parent run RUNNING) it says so and writes its files to the output folder
  only, never into the live parent run;
- a pipeline check (preset smoke) or a table of fewer than 2 seeds carries the same words in the title
  of every file it writes (Markdown heading, LaTeX caption, the `caveat` column of CSV and Parquet, the
  Parquet metadata, the figures' titles and their PNG Title chunk), and figures of accuracies near
  chance say so.
"""
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from test_analysis_cifar10c import artifact_doc, key
from test_analysis_cifar10c import values as c10c_values
from test_analysis_table2 import TEST_SETS, log_calibration

from analysis import ablate, cifar10c, table2
from analysis.common import NOT_A_RESULT, RUNNING_CAVEAT, run_cli
from helpers_mlflow import PROVENANCE, ROWS, SCHEDULE, new_experiment

SMOKE_CAVEAT = "pipeline check — not a result (smoke preset, n = 1 seed)"
pytestmark = pytest.mark.usefixtures("fast_http_failure")


def log_json(client, run, name, doc, tmp):
    f = tmp / run / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(doc))
    client.log_artifact(run, str(f))


def record(client, exp_id, tmp, name, kind, preset, children, running=False):
    """A parent run of `kind` and `preset` and its FINISHED children: `children` = [(run name, tags,
    metrics, artifacts {file name: doc})]; the parent is left RUNNING with `running`."""
    seeds = {c[1].get("iqa_ls.seed") for c in children}
    parent = client.create_run(exp_id, run_name=name, tags={
        "iqa_ls.role": "parent", "iqa_ls.study": name, "iqa_ls.kind": kind, "iqa_ls.preset": preset,
        "iqa_ls.seeds": str(len(seeds)), **PROVENANCE}).info.run_id
    for run_name, tags, metrics, artifacts in children:
        run = client.create_run(exp_id, run_name=run_name, tags={
            "mlflow.parentRunId": parent, "iqa_ls.role": "trial", "iqa_ls.study": name,
            "iqa_ls.trial_key": run_name, **tags, **PROVENANCE}).info.run_id
        client.log_batch(run, params=[Param(k, v) for k, v in SCHEDULE.items()],
                         metrics=[Metric(k, v, 0, 3) for k, v in metrics.items()])
        for file, doc in artifacts.items():
            if file == "calibration.json":
                log_calibration(client, run, doc)
            else:
                log_json(client, run, file, doc, tmp)
        client.set_terminated(run, "FINISHED")
    if not running:
        client.set_terminated(parent, "FINISHED")
    return parent


def table2_children(rng, seeds, low, high, with_c10c=True):
    """One run per strategy and seed: the 10 accuracies drawn in [low, high), their calibration artifact
    and (with_c10c) CIFAR-10-C results."""
    out = []
    for s, (train_set, reg) in ROWS.items():
        for seed in seeds:
            accs = list(np.round(rng.uniform(low, high, 10), 4))
            metrics = {f"acc_{t}": a for t, a in zip(TEST_SETS, accs)}
            metrics.update({f"ece_{t}": 0.1 for t in TEST_SETS} | {f"nll_{t}": 2.3 for t in TEST_SETS})
            artifacts = {"calibration.json": accs}
            if with_c10c:
                metrics.update(c10c_values(rng, s, seed))
                artifacts["cifar10c.json"] = artifact_doc(key())
            out.append((f"s{s}-seed{seed}", {"iqa_ls.strategy": str(s), "iqa_ls.train_set": train_set,
                                             "iqa_ls.regularization": reg, "iqa_ls.seed": str(seed)},
                        metrics, artifacts))
    return out


def ablation_children(rng, seeds, low, high):
    """The tmap ablation of two settings (the one-hot reference and identity), one run per seed."""
    out = []
    for order, (label, reg) in enumerate([("onehot", "onehot"), ("identity", "iqa_ls")]):
        for seed in seeds:
            accs = list(np.round(rng.uniform(low, high, 10), 4))
            metrics = {f"acc_{t}": a for t, a in zip(TEST_SETS, accs)} | {"acc_mean_all": float(np.mean(accs)),
                                                                          "mean_t": 0.9}
            out.append((f"tmap-{label}-seed{seed}", {
                "iqa_ls.strategy": "0", "iqa_ls.train_set": "mix_all3", "iqa_ls.regularization": reg,
                "iqa_ls.seed": str(seed), "iqa_ls.ablation": "tmap", "iqa_ls.setting": label,
                "iqa_ls.setting_order": str(order), "iqa_ls.ablated": json.dumps({"tmap": label})},
                metrics, {"calibration.json": accs}))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root, uri, client, exp_id = new_experiment(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("artifacts")
    rng = np.random.default_rng(0)
    parents = {
        # what a smoke study records: one seed, accuracies near chance (issue 20: a heatmap of 0.10-0.17)
        "smoke": record(client, exp_id, tmp, "smoke", "table2", "smoke", table2_children(rng, [0], 0.10, 0.17)),
        "smoke-abl": record(client, exp_id, tmp, "smoke-abl", "ablate-tmap", "smoke",
                            ablation_children(rng, [0], 0.10, 0.17)),
        # a study of the quick preset with two seeds, accuracies far from chance: a result, no caveat
        "two": record(client, exp_id, tmp, "two", "table2", "quick", table2_children(rng, [0, 1], 0.5, 0.8)),
        # one seed of a full preset: no pipeline check, but no interval either
        "one": record(client, exp_id, tmp, "one", "table2", "quick",
                      table2_children(rng, [0], 0.5, 0.8, with_c10c=False)),
        "abl": record(client, exp_id, tmp, "abl", "ablate-tmap", "quick", ablation_children(rng, [0, 1], 0.5, 0.8)),
        "other": record(client, exp_id, tmp, "other", "bench", "quick", table2_children(rng, [0], 0.5, 0.8)),
        # a study still running: its parent run RUNNING, some trials finished
        "live": record(client, exp_id, tmp, "live", "table2", "quick", table2_children(rng, [0, 1], 0.5, 0.8),
                       running=True),
        "live-abl": record(client, exp_id, tmp, "live-abl", "ablate-tmap", "quick",
                           ablation_children(rng, [0, 1], 0.5, 0.8), running=True),
    }
    return {"root": root, "uri": uri, "client": client, "parents": parents}


def logged(store, study) -> list:
    return store["client"].list_artifacts(store["parents"][study], "analysis")


# ------------------------------------------------------------------ issue 21: the wrong kind of study
@pytest.mark.parametrize("prog,module,study,words", [
    ("table2", table2, "abl", ["'abl' is a 'ablate-tmap' study", "python -m analysis.ablate --study abl"]),
    ("ablate", ablate, "two", ["'two' is a 'table2' study", "python -m analysis.table2 --study two"]),
    ("cifar10c", cifar10c, "other", ["'other' is a 'bench' study", "no analysis command reads that kind"]),
    ("table2", table2, "other", ["'other' is a 'bench' study", "no analysis command reads that kind"]),
])
def test_another_kind_of_study_is_refused_in_one_line_writing_nothing(store, capsys, prog, module, study, words):
    out = store["root"] / f"never-{prog}-{study}"
    capsys.readouterr()
    assert run_cli(prog, module.main, ["--study", study, "--tracking-uri", store["uri"], "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and captured.out == "", captured
    for w in words:
        assert w in err[0]
    assert not out.exists()
    assert logged(store, study) == []


def test_cifar10c_reads_both_kinds_it_knows(store, tmp_path):
    """The refusal is by kind, not a blanket one: CIFAR-10-C tables of a Table 2 study are built."""
    res = cifar10c.build_cifar10c("two", tracking_uri=store["uri"], out_dir=tmp_path, log_to_parent=False)
    assert (tmp_path / "cifar10c.md").is_file() and res["cells"]["n"].max() == 2


# ------------------------------------------------------------------ issue 21: a study still running
@pytest.mark.parametrize("prog,module,study,stem", [("table2", table2, "live", "table2"),
                                                    ("ablate", ablate, "live-abl", "ablate_tmap")])
def test_a_running_study_is_said_so_and_its_parent_run_is_not_written(store, capsys, prog, module, study, stem):
    out = store["root"] / f"out-{study}"
    capsys.readouterr()
    assert run_cli(prog, module.main, ["--study", study, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert f"study '{study}' is still running" in console and "not logged to the parent run" in console
    assert "also logged to the parent run" not in console
    md = (out / f"{stem}.md").read_text().splitlines()
    assert md[0].endswith(RUNNING_CAVEAT) and any("is still running" in line for line in md[:8])
    assert pd.read_csv(out / f"{stem}.csv")["caveat"].eq(RUNNING_CAVEAT).all()
    assert logged(store, study) == []


def test_a_finished_study_is_still_logged_without_the_running_words(store, tmp_path):
    res = table2.build_table2("two", tracking_uri=store["uri"], out_dir=tmp_path)
    assert res["logged"] and not res["running"] and res["caveats"] == []
    assert {f.path for f in logged(store, "two")} >= {"analysis/table2.md", "analysis/table2_heatmap.png"}
    for f in res["files"].values():  # a result: none of the caveats' words in any file
        assert NOT_A_RESULT.encode() not in f.read_bytes() and b"near chance" not in f.read_bytes(), f
    assert pd.read_csv(tmp_path / "table2.csv")["caveat"].isna().all()  # the column is there, empty


# ------------------------------------------------------------------ issue 20: results that say what they are
@pytest.fixture(scope="module")
def smoke_files(store, tmp_path_factory):
    """The three analyses of the smoke-level records, run as a user would (the CLIs, into --out)."""
    out = tmp_path_factory.mktemp("smoke-out")
    for prog, module, study in (("table2", table2, "smoke"), ("cifar10c", cifar10c, "smoke"),
                                ("ablate", ablate, "smoke-abl")):
        assert run_cli(prog, module.main, ["--study", study, "--tracking-uri", store["uri"], "--out",
                                           str(out / study), "--no-log"]) == 0
    return out


def test_every_file_of_a_pipeline_check_carries_the_caveat(smoke_files):
    files = sorted(p for p in smoke_files.rglob("*") if p.is_file())
    # table2: 3 families x (md, csv, tex, parquet, pairs csv) + 4 figures; cifar10c: 9; ablate tmap: 9
    assert len(files) == 15 + 4 + 9 + 9
    for f in files:
        assert SMOKE_CAVEAT.encode() in f.read_bytes(), f.name


def test_the_caveat_sits_in_each_files_title(smoke_files):
    from PIL import Image

    t2 = smoke_files / "smoke"
    assert (t2 / "table2.md").read_text().splitlines()[0].endswith(f"— {SMOKE_CAVEAT}")
    assert "\\caption{\\textbf{Pipeline check — not a result (smoke preset, n = 1 seed).} " in \
        (t2 / "table2.tex").read_text()
    assert pd.read_csv(t2 / "table2_pairs.csv")["caveat"].eq(SMOKE_CAVEAT).all()
    pq = pd.read_parquet(t2 / "table2.parquet")
    assert pq["caveat"].eq(SMOKE_CAVEAT).all()
    import pyarrow.parquet as papq
    assert papq.read_schema(t2 / "table2.parquet").metadata[b"caveat"].decode() == SMOKE_CAVEAT
    heat = Image.open(t2 / "table2_heatmap.png").text["Title"]
    assert SMOKE_CAVEAT in heat and "colours span only 0.1" in heat
    assert json.loads((t2 / "cifar10c_robustbench.json").read_text())["caveat"] == SMOKE_CAVEAT


@pytest.mark.parametrize("png", ["smoke/table2_heatmap.png", "smoke/table2_diff_vs_paper.png",
                                 "smoke/table2_reliability.png", "smoke/table2_confidence_quality.png",
                                 "smoke-abl/ablate_tmap_groups.png"])
def test_figures_of_accuracies_near_chance_say_so(smoke_files, png):
    from PIL import Image

    title = Image.open(smoke_files / png).text["Title"]
    assert "accuracies near chance (mean 0.1" in title and "chance 0.10)" in title


def test_analysis_rebuilds_the_study_tables_with_the_same_words(store, smoke_files, tmp_path):
    """What a study's own call (build_table2 from study.table2) writes and the CLI's rebuild agree."""
    res = table2.build_table2("smoke", tracking_uri=store["uri"], out_dir=tmp_path, log_to_parent=False)
    assert res["caveats"] == [SMOKE_CAVEAT]
    for name in res["files"]:
        assert (tmp_path / name).read_bytes() == (smoke_files / "smoke" / name).read_bytes(), name
    assert f"caveat: {SMOKE_CAVEAT}" in table2.format_console(res)


def test_one_seed_of_a_full_preset_is_not_a_result_either(store, tmp_path):
    res = table2.build_table2("one", tracking_uri=store["uri"], out_dir=tmp_path, log_to_parent=False)
    assert res["caveats"] == ["single seed — not a result (n = 1 seed, no interval)"]
    assert "near chance" not in "".join(res["plot_caveats"])  # accuracies 0.5-0.8
    for f in res["files"].values():
        assert res["caveats"][0].encode() in f.read_bytes(), f.name


def test_tables_explain_their_words_in_a_legend(smoke_files):
    for md in ("smoke/table2.md", "smoke/table2_ece.md", "smoke/cifar10c.md", "smoke-abl/ablate_tmap.md"):
        legend = [line for line in (smoke_files / md).read_text().splitlines() if line.startswith("Legend: ")]
        assert len(legend) == 1, md
        for word in ("acc_mean_all", "Holm", "resolved"):
            assert word in legend[0], (md, word)
