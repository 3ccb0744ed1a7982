"""study.pack_probe: the Table 2 grid packed vs one trial alone, and the paper-schedule projection."""
import json
from pathlib import Path

import pytest

from study import pack_probe

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cifar10-mini"


@pytest.mark.slow
def test_probe_trains_the_grid_packed_and_alone_and_projects_from_the_steady_epoch(tmp_path):
    res = pack_probe.probe(str(FIXTURE), "cpu", epochs=2, seeds=1, cache_dir=tmp_path, paper_epochs=10)
    p, a = res["packed"], res["alone"]
    assert p["members"] == 9 and a["members"] == 1 and res["train_images"] == 400
    assert len(p["epoch_times_s"]) == 2 and len(a["epoch_times_s"]) == 2
    for s in (p, a):
        assert s["steady_epoch_s"] == s["epoch_times_s"][1]  # the first epoch is the warm-up
        assert s["paper_projection_s"] == pytest.approx(s["wall_s"] + 8 * s["steady_epoch_s"])  # 10 - 2 measured
        assert s["one_off_s"] > 0 and s["wall_s"] > sum(s["epoch_times_s"])
        assert s["images_per_s"] == pytest.approx(s["members"] * 400 / s["steady_epoch_s"])
    assert sorted(p["pristine_acc"]) == sorted(f"s{k}-seed0" for k in range(1, 10))
    # on CPU strategy 9 trains the same in the pack as alone (float32 rounding of the grouped conv)
    assert res["epoch1_loss"]["abs_diff"] < 1e-4
    assert res["sequential_projection_s"] == pytest.approx(9 * a["paper_projection_s"])


@pytest.mark.parametrize("argv, words", [(["--epochs", "0"], ["--epochs 0", ">= 1"]),
                                         (["--seeds", "-1"], ["--seeds -1", ">= 1"]),
                                         (["--epochs", "3", "--paper-epochs", "2"], ["--epochs 3", "at most"]),
                                         (["--device", "cuda:7"], ["cuda:7"])])
def test_bad_flags_are_refused_in_one_line_before_any_work(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(pack_probe.torch.cuda, "is_available", lambda: False)
    called = []
    monkeypatch.setattr(pack_probe, "probe", lambda *a, **k: called.append(a))
    with pytest.raises(SystemExit) as e:
        pack_probe.main(argv + ["--data", str(FIXTURE)])
    assert e.value.code == 2 and not called
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(w in err for w in words), err


def test_json_is_written(tmp_path, monkeypatch, capsys):
    fake = {"paper_epochs": 10, "epochs": 2, "train_images": 400, "data": "x", "device": "cpu",
            "packed": {"members": 9, "epoch_times_s": [2.0, 1.0], "steady_epoch_s": 1.0, "one_off_s": 0.5,
                       "images_per_s": 3600.0, "paper_projection_s": 10.5, "pristine_acc": {"s1-seed0": 0.1}},
            "alone": {"members": 1, "epoch_times_s": [0.5, 0.4], "steady_epoch_s": 0.4, "one_off_s": 0.1,
                      "images_per_s": 1000.0, "paper_projection_s": 4.1, "pristine_acc": 0.2},
            "epoch1_loss": {"packed": 2.3, "alone": 2.3, "abs_diff": 0.0},
            "sequential_projection_s": 36.9, "packed_speedup": 36.9 / 10.5}
    monkeypatch.setattr(pack_probe, "probe", lambda *a, **k: dict(fake))
    out = tmp_path / "p.json"
    assert pack_probe.main(["--device", "cpu", "--data", str(FIXTURE), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["packed_speedup"] == pytest.approx(36.9 / 10.5)
    text = capsys.readouterr().out
    assert "packed, 9 trials" in text and "one after another 0.6 min" in text and "(3.5x)" in text
