"""bench/gpu_check.py (issue #13's GPU check): what runs without CUDA. Moved from tests/test_fast.py."""
from pathlib import Path

import pytest
import torch

from bench import gpu_check


def test_gpu_check_refuses_without_cuda_and_builds_valid_pack_configs(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--data", "x"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    cfgs = gpu_check.grid_cfgs("cifar10", "cuda", (1, 8, 9), 3, epochs=8, precision="bf16")
    assert len(cfgs) == 9 and {c.subset_seed for c in cfgs} == {0, 1, 2}
    from trainables.packed import pack_key
    assert len({pack_key(c) for c in cfgs}) == 1  # one pack: they differ only where a pack allows


@pytest.mark.slow
def test_probe_trains_the_grid_packed_and_alone_and_projects_from_the_steady_epoch(tmp_path):
    """The whole-epoch projection of gpu_check's speed step (what was study.pack_probe), on a CPU."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "cifar10-mini"
    res = gpu_check.probe(str(fixture), "cpu", epochs=2, seeds=1, cache_dir=tmp_path, paper_epochs=10)
    p, a = res["packed"], res["alone"]
    assert p["members"] == 9 and a["members"] == 1 and res["train_images"] == 400
    assert len(p["epoch_times_s"]) == 2 and len(a["epoch_times_s"]) == 2
    for s in (p, a):
        assert s["steady_epoch_s"] == s["epoch_times_s"][1]  # the first epoch is the warm-up
        assert s["paper_projection_s"] == pytest.approx(s["wall_s"] + 8 * s["steady_epoch_s"])  # 10 - 2 measured
        assert s["one_off_s"] > 0 and s["wall_s"] > sum(s["epoch_times_s"])
        assert s["images_per_s"] == pytest.approx(s["members"] * 400 / s["steady_epoch_s"])
    assert sorted(p["pristine_acc"]) == sorted(f"s{k}-seed0" for k in range(1, 10))
    assert len(p["data_share"]) == 2 and all(0 < v < 1 for v in p["data_share"])
    # on CPU strategy 9 trains the same in the pack as alone (float32 rounding of the grouped conv)
    assert res["epoch1_loss"]["abs_diff"] < 1e-4
    assert res["sequential_projection_s"] == pytest.approx(9 * a["paper_projection_s"])
