"""Issue 21: a trial that no node of a cluster can hold is reported and the study stopped
(study.tuning.wait_for_a_node; end to end on a real cluster: tests/test_multinode.py)."""
import pytest

pytest.importorskip("ray")
from study.spec import Unschedulable  # noqa: E402
from study.tuning import wait_for_a_node  # noqa: E402

NEED = {"cpu": 2.0, "gpu": 1.0}


def test_a_node_that_holds_a_trial_ends_the_wait_at_once():
    said = []
    wait_for_a_node(NEED, "head:6379", said.append, 60, nodes=lambda: [{"CPU": 1, "GPU": 0}, {"CPU": 8, "GPU": 1}])
    assert said == []


def test_without_such_a_node_the_study_stops_after_the_wait_naming_the_nodes():
    said = []
    with pytest.raises(Unschedulable) as e:
        wait_for_a_node(NEED, "head:6379", lambda *a, **k: said.append(a[0]), 0.05, poll_s=0.01,
                        nodes=lambda: [{"CPU": 16, "GPU": 0}, {"CPU": 1, "GPU": 1}])
    assert str(e.value) == ("no node of the cluster at head:6379 can hold a trial (2 CPU + 1 GPU per trial; its "
                            "nodes: 16 CPU + 0 GPU, 1 CPU + 1 GPU), and none joined within --node-wait 0.05 s; "
                            "allowed: --cpus-per-trial/--gpus-per-trial within one node's, or a cluster with such "
                            "a node")
    assert len(said) == 1 and "waiting up to 0.05 s for one to join" in said[0]


def test_a_node_that_joins_while_waiting_lets_the_study_go_on():
    seen = iter([[{"CPU": 1, "GPU": 0}], [{"CPU": 1, "GPU": 0}], [{"CPU": 1, "GPU": 0}, {"CPU": 4, "GPU": 2}]])
    said = []
    wait_for_a_node(NEED, "auto", lambda *a, **k: said.append(a[0]), 30, poll_s=0.01, nodes=lambda: next(seen))
    assert len(said) == 1 and "nodes: 1 CPU + 0 GPU" in said[0]


@pytest.mark.parametrize("argv,said", [
    (["--node-wait", "-1"], "--node-wait -1.0 is not allowed; allowed: seconds 0..86400"),
    (["--pack-data", "fast"], "--pack-data fast is not allowed; allowed: per_member, batched"),
    (["--pack-eval", "jit"], "--pack-eval jit is not allowed; allowed: per_member, vmap"),
])
def test_run_flags_outside_their_values_are_refused(refuse, argv, said):
    assert said in refuse(*argv)
