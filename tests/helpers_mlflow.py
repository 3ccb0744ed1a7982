"""Helpers several test modules share: a free local port, a real `mlflow server` on it, and a
study's runs read back from a store (conftest.py holds the fixtures)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

# A made-up recorded study for the analysis tests: Table 2's rows as the study tags them (as
# search_spaces/table2.STRATEGIES), every trial's provenance tags and schedule params.
ROWS = {1: ("pristine", "onehot"), 2: ("mix_blur", "onehot"), 3: ("mix_blur", "iqa_ls"),
        4: ("mix_noise", "onehot"), 5: ("mix_noise", "iqa_ls"), 6: ("mix_jpeg", "onehot"),
        7: ("mix_jpeg", "iqa_ls"), 8: ("mix_all3", "onehot"), 9: ("mix_all3", "iqa_ls")}
PROVENANCE = {"iqa_ls.data_source": "/data/cifar10-jpeg", "iqa_ls.data_checksum": "sha256:0123abcd",
              "iqa_ls.git_commit": "deadbeef", "iqa_ls.device_name": "Test CPU x2",
              "iqa_ls.versions": json.dumps({"python": "3.11.9", "torch": "2.14.1", "mlflow": "3.17.2"})}
SCHEDULE = {"epochs": "3", "subset": "0", "test_subset": "2000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(tmp: Path, port: int, *extra: str, new_session: bool = False) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` over `tmp`/server.db, started and answering /health (up to
    180 s on a loaded machine), or an AssertionError; the caller stops it."""
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                          "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--workers", "1", *extra],
                         cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=new_session)
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p
        except OSError:
            time.sleep(1)
    p.kill()
    raise AssertionError("mlflow server did not start")


def new_experiment(tmp_path_factory) -> tuple[Path, str, MlflowClient, str]:
    """(folder, URI, client, experiment id) of a new SQLite store with the "iqa-ls" experiment, its
    artifacts in the folder: what the analysis tests write their made-up studies into."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    return root, uri, client, client.create_experiment("iqa-ls", artifact_location=(root / "artifacts").as_uri())


def study_runs(uri: str, study_name: str) -> tuple[MlflowClient, list, list]:
    """(client, parent runs, trial runs) of a study in the store at `uri`."""
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("iqa-ls")
    runs = c.search_runs([exp.experiment_id], f"tags.`iqa_ls.study` = '{study_name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("iqa_ls.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("iqa_ls.role") == "trial"]
    return c, parents, children
