"""Shared test fixtures."""
import shutil
from pathlib import Path

import pytest
import torch

CIFAR_MINI = Path(__file__).parent / "fixtures" / "cifar10-mini"
STUDY_ENV = ("IQA_LS_FAULT", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")  # a caller's values would change a study


# ------------------------------------------------------------------ how the suite is run (docs/testing.md)
def pytest_collection_modifyitems(config, items):
    """Modules with end-to-end (`slow`) tests first, each module's tests kept together and in order.

    Under `-n 2` a whole module goes to one worker (below) and workers take modules in this order, so
    the long studies start first and the many short unit tests fill the end on both workers. A stable
    sort on the module: no test moves within its module, and a module-scoped study still runs once."""
    e2e = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in e2e)


@pytest.hookimpl(optionalhook=True)  # only called when pytest-xdist is installed
def pytest_xdist_make_scheduler(config, log):
    """`-n N`: one module per worker at a time, in collection order (xdist's `--dist loadfile`, minus
    its reordering by test count, which would put the two-test multi-node module last). A module's
    tests share module-scoped fixtures that are whole studies (~30-120 s each): spread over workers
    they would run once per worker. An explicit `--dist` other than the default `load` is kept."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling
    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def fast_http_failure(monkeypatch):
    """An unreachable tracking server fails at once (no retries, 5 s). The analysis commands (run_cli)
    only set these when unset; setting them here keeps the test process's environment clean."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """`new_store(path)`: an empty MLflow SQLite store at `path` (a file), copied from one made once per
    session. MLflow's first opening of a new file runs its ~60 table migrations (5-8 s on 2 cores); the
    end-to-end tests are about studies, not that, so each starts from the migrated empty file. Store
    creation itself is tested where it is the subject (tests/test_study_trust.py: the lock, the race)."""
    from mlflow.tracking import MlflowClient
    template = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()

    def place(path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return path
    return place


@pytest.fixture
def refuse(tmp_path, monkeypatch, capsys):
    """`refuse(*flags)`: study.table2's main (or `command="ablate"`: study.ablate's), run in this process in
    `tmp_path/run` on the fixture, must refuse with one line on stderr and exit code 2 (returned or
    raised by argparse), and leave the folder as it was: no store, no storage folder, no results,
    and no decoded data in the cache (the checks of flags, paths and sizes come before the data is
    decoded; `decoded=True` for a refusal that needs the data or the records: a held lock, a resume).
    Returns the line. In process: a refusal needs no fresh interpreter (its imports cost ~12 s)."""
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    for var in STUDY_ENV:  # cleared before the test, which may set one (IQA_LS_FAULT) on purpose
        monkeypatch.delenv(var, raising=False)

    def check(*flags, data_dir=CIFAR_MINI, decoded=False, command="table2") -> str:
        import importlib
        main = importlib.import_module(f"study.{command}").main
        cwd = tmp_path / "run"
        cwd.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(cwd)
        before = listing(cwd)
        argv = ["--preset", "smoke", "--data", str(data_dir), "--test-subset", "50", *flags]
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (rc, err)
        assert listing(cwd) == before
        assert decoded or not (tmp_path / "cache").exists(), listing(tmp_path / "cache")
        return err[0]
    return check


@pytest.fixture(scope="session")
def cifar_mini_images() -> torch.Tensor:
    """The 400 real CIFAR-10 training images of the fixture as uint8 400 x 3 x 32 x 32 (CPU).

    Decoded here with pyarrow + torchvision, independently of trainables.data."""
    import warnings

    import pyarrow.parquet as pq
    from torchvision.io import ImageReadMode, decode_image

    table = pq.read_table(CIFAR_MINI / "train.parquet", columns=["img"])
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (TorchCodec not installed)
        warnings.simplefilter("ignore", DeprecationWarning)
        images = [decode_image(torch.frombuffer(bytearray(cell["bytes"]), dtype=torch.uint8),
                               mode=ImageReadMode.RGB) for cell in table.column("img").to_pylist()]
    return torch.stack(images)
