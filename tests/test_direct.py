"""study.direct: a grid as one pack without Ray or MLflow."""
from pathlib import Path

import pytest

from search_spaces import ablate_iqa
from search_spaces import table2 as space
from search_spaces.presets import resolve
from study import direct
from study.ablate import matched_controls
from trainables.config import NUM_CLASSES

FIXTURE = str(Path(__file__).resolve().parent / "fixtures" / "cifar10-mini")


def _fields():
    return {**resolve("smoke"), "data": FIXTURE, "device": "cpu"}


def test_table2_members_are_the_grid_and_the_pairs_are_the_papers():
    todo, pairs = direct.members("table2", _fields(), seeds=2)
    assert [(c.strategy, c.seed) for _, c in todo] == [(t["strategy"], t["seed"]) for t in space.grid(2)]
    assert all(c.train_set == space.STRATEGIES[c.strategy][0] and c.regularization == space.STRATEGIES[c.strategy][1]
               for _, c in todo)
    assert pairs == [(f"{a} {space.STRATEGIES[a][0]} {space.STRATEGIES[a][1]}",
                      f"{b} {space.STRATEGIES[b][0]} {space.STRATEGIES[b][1]}") for a, b in space.PAIRS]


@pytest.mark.slow
def test_iqa_grid_runs_as_one_pack_with_the_matched_control_and_prints_differences(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    res = direct.run("iqa", _fields(), seeds=1, progress=lambda line: None)
    labels = [m["label"] for m in res["members"]]
    assert labels == [st["setting"] for st in ablate_iqa.settings()]
    assert all("error" not in m["result"] and 0 <= m["result"]["acc_pristine"] <= 1 for m in res["members"])
    uniform = next(m for m in res["members"] if m["label"].startswith("uniform"))
    from types import SimpleNamespace
    mean_t, eps = matched_controls(SimpleNamespace(seeds=1, fixed_subset=False),
                                   {**_fields(), "train_set": direct.ABLATION_TRAIN_SET, "strategy": 0})[0]
    assert uniform["config"]["ls_epsilon"] == pytest.approx(eps)
    assert 1 - eps + eps / NUM_CLASSES == pytest.approx(mean_t)  # same mean confidence as IQA-LS (ssim)
    ssim_member = next(m for m in res["members"] if m["label"] == "ssim")
    for m in (uniform, ssim_member):  # what each recorded in epoch 1
        assert len(m["history"]) == 2 and m["history"][0]["mean_t"] == pytest.approx(mean_t, abs=1e-6)
    assert res["pairs"] == [("onehot (Original)", lab) for lab in labels if lab != "onehot (Original)"]
    text = direct.summarize(res)
    ssim, onehot = (next(m["result"] for m in res["members"] if m["label"] == lab) for lab in ("ssim", "onehot (Original)"))
    row = next(line for line in text.splitlines() if line.startswith("ssim - onehot (Original)"))
    assert row.split()[5] == f"{ssim['acc_pristine'] - onehot['acc_pristine']:+.4f}"  # label (4 words), n, pristine


@pytest.mark.parametrize("argv, words", [(["--grid", "nope"], ["--grid nope", "table2, tmap"]),
                                         (["--seeds", "0"], ["--seeds 0", ">= 1"]),
                                         (["--preset", "fast"], ["preset='fast'", "paper"]),
                                         (["--epochs", "-1"], ["epochs=-1"]),
                                         (["--data", "/nonexistent/cifar"], ["/nonexistent/cifar", "does not exist"])])
def test_bad_flags_are_refused_in_one_line_before_any_work(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(direct, "run", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(SystemExit) as e:
        direct.main(["--data", FIXTURE, "--device", "cpu"] + argv)  # argparse: the last --data wins
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(w in err for w in words), err
