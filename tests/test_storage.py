"""study.storage: one path-or-URI layer for the study's files, on a local folder and on an object
store. The object store here is pyarrow's in-memory filesystem behind a `mock://` scheme (one
instance for the test, as one bucket is for every driver and worker), so the object-store branches
of the manifest, the trial folders (TrialStore) and the driver lock run without a network."""
import json

import pyarrow.fs as pafs
import pytest

from study import storage


@pytest.fixture
def bucket(monkeypatch):
    """`mock://...` URIs on one in-memory pyarrow filesystem; everything else as before."""
    fs = pafs._MockFileSystem()
    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem",
                        lambda uri: (fs, uri.split("://", 1)[1]) if uri.startswith("mock://") else real(uri))
    return fs


def test_a_local_write_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    folder = storage.Folder(str(tmp_path / "a" / "b"))
    assert folder.local and folder.read_text("x.json") is None and folder.folders() == []
    folder.write_text("x.json", "old")
    folder.write_text("x.json", "new")
    assert (tmp_path / "a" / "b" / "x.json").read_text() == "new"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["x.json"]
    folder.delete("x.json")
    folder.delete("x.json")  # gone already: nothing to do
    assert folder.read_text("x.json") is None


@pytest.mark.parametrize("where", ["local", "object store"])
def test_manifest_and_trial_folders_on_either_storage(where, tmp_path, bucket):
    root = str(tmp_path / "st") if where == "local" else "mock://bucket/st"
    assert storage.read_manifest(root, "s1") is None and storage.trial_folders(root, "s1") == []
    storage.write_manifest(root, "s1", {"name": "s1", "trials": {"a": {}}})
    assert storage.read_manifest(root, "s1") == {"name": "s1", "trials": {"a": {}}}
    for key in ("b", "a"):
        storage.Folder(storage.trial_folder(root, "s1", key)).write_text("owner.json", "{}")
    assert storage.trial_folders(root, "s1") == ["a", "b"]
    assert storage.trial_folder(root + "/", "s1", "a") == f"{root}/s1/trials/a"


def test_a_new_study_is_refused_where_the_object_store_holds_its_name(bucket):
    from study.spec import StudyError, StudySpec
    spec = StudySpec(name="s1", preset="smoke", seeds=1, tracking_uri="sqlite:///x.db", experiment="e",
                     storage="mock://bucket/st", out=None)
    storage.check_no_checkpoints(spec, spec.storage)  # nothing there yet
    storage.write_manifest(spec.storage, "s1", {})
    with pytest.raises(StudyError, match=r"already holds the study's study.json of a study named 's1'"):
        storage.check_no_checkpoints(spec, spec.storage)


def test_a_trial_folder_on_an_object_store_works_locally_and_uploads(bucket, tmp_path):
    from study.execution import OWNER_FILE, TrialStore
    uri = "mock://bucket/st/s1/trials/a"
    store = TrialStore(uri)
    assert store.remote and store.pull() == store.work_dir and list(store.work_dir.iterdir()) == []
    token = store.claim({"node": "n1"})
    assert store.owner() == {"token": token, "node": "n1"}
    (store.work_dir / "checkpoint.pt").write_bytes(b"state")
    (store.work_dir / OWNER_FILE).write_text("a stale local copy")  # never uploaded over the claim
    store.push()
    assert store.owner()["token"] == token
    other = TrialStore(uri)  # another attempt, on another node: it finds the checkpoint, not the owner file
    assert sorted(p.name for p in other.pull().iterdir()) == ["checkpoint.pt"]
    assert (other.work_dir / "checkpoint.pt").read_bytes() == b"state"
    assert other.claim({"node": "n2"}) != token and store.owner()["node"] == "n2"  # the last claim wins


def test_the_driver_lock_on_an_object_store(bucket, monkeypatch):
    from study import lock as lock_mod
    monkeypatch.setattr(lock_mod, "REMOTE_SETTLE_S", 0.0)
    first = lock_mod.StudyLock("mock://bucket/st/s1")
    first.acquire()
    held = json.loads(storage.Folder("mock://bucket/st/s1").read_text(lock_mod.LOCK_FILE))
    assert held["token"] == first.holder["token"]
    with pytest.raises(lock_mod.LockHeld, match="study is driven by another process"):
        lock_mod.StudyLock("mock://bucket/st/s1").acquire()
    first.release()
    assert storage.Folder("mock://bucket/st/s1").read_text(lock_mod.LOCK_FILE) is None
    with lock_mod.StudyLock("mock://bucket/st/s1") as second:  # free again
        assert second.holder is not None


def test_table2_records_the_flags_as_given_and_trains_on_the_resolved_data(tmp_path, monkeypatch):
    """The Namespace stops at the command's edge: the spec and the trials are built from the final
    values once; the trials get --data resolved (Ray workers do not share our cwd), the spec keeps
    the flag as typed (what the manifest and the parent run record, as before)."""
    from pathlib import Path

    from study import table2
    fixture = Path(__file__).parent / "fixtures" / "cifar10-mini"
    monkeypatch.chdir(fixture.parent)
    seen = {}
    monkeypatch.setattr(table2, "run_study", lambda spec, kind, trials, *a, **k: seen.update(
        spec=spec, trials=trials) or 0)
    assert table2.main(["--data", "cifar10-mini", "--strategies", "1,8", "--device", "cpu"]) == 0
    assert seen["spec"].flags["data"] == "cifar10-mini"
    assert {t.config.data for t in seen["trials"]} == {str(fixture.resolve())}
