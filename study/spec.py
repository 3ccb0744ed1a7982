"""The study's data types: its settings (`StudySpec`), its trials (`Trial`), its search (`Search`), the
state its steps hand on (`StudyRun`) and its one-line refusals (`StudyError`, `SpecError`,
`TrackingError`, `TrackingLost`).

The study's own settings, as a trial's are a TrialConfig: one frozen, validated spec built once from
the command's flags (`StudySpec.from_args`), the argparse Namespace stopping at the command's edge.

A study command turns its flags into trials (TrialConfigs: what each trial trains) and a StudySpec
(how the study runs them: its name and records, where checkpoints go, which executor, on which
device, with which resources, resumed or not). Both executors (`ray`, `local`) and every step of
study.runner read the spec; nothing below the command reads the Namespace. Every value is checked
here, before any work, with one line naming the flag, the value and what is allowed.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from analysis.schema import sqlite_path
from trainables.config import PACK_DATA, PACK_EVAL, STEP_IMPLS, TrialConfig

EXECUTORS = ("ray", "local")
PACK_MODES = ("auto", "on", "off")
PRECISION_CHOICES = ("auto", "fp32", "tf32", "bf16")
# A study name becomes a folder (<storage>/<name>), a Ray experiment name and an MLflow tag value:
# letters, digits and . _ - only, not starting with . or - (no '', '..', '/x', quotes or spaces).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+"


class SpecError(ValueError):
    """A bad study flag; the one-line message names it, its value and what is allowed."""


class StudyError(RuntimeError):
    """Refused before any trial starts; the message is the one line the user sees."""


class Unschedulable(StudyError):
    """No node of the cluster can hold a trial (its CPUs/GPUs per trial), and none joined in time: the
    study is stopped before any trial starts (its parent run FAILED, exit code 1)."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and why."""


# The tracking URIs a study can use (docs/commands.md). A database URI (postgresql://, mysql://, ...)
# is left out on purpose: MLflow gives its runs' artifacts ./mlruns of whatever folder the command runs
# in (a SQLite store gets mlartifacts/ beside its file, study.tracking.ARTIFACT_DIR), and no driver for
# one is installed here; an mlflow server in front of that database is the way to use it.
TRACKING_SCHEMES = ("sqlite:///PATH", "http(s)://HOST:PORT")


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a tracking URI this install cannot keep records in: a scheme outside
    TRACKING_SCHEMES, a SQLite URI that names no file (`sqlite:///` alone, a folder) or lies in a
    folder that does not exist or cannot be written, an unreachable server. Writes nothing."""
    allowed = f"allowed: {' or '.join(TRACKING_SCHEMES)} (PATH: a file, new or an MLflow store)"
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingError(f"tracking URI {uri!r} is not allowed (empty); {allowed}")
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ("databricks" if uri == "databricks" else "")
    if scheme in ("http", "https"):
        if not uri.split("://", 1)[-1].strip("/") or "://" not in uri:
            raise TrackingError(f"tracking URI {uri!r} names no host; {allowed}")
        _check_server(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri, allowed)
    else:
        raise TrackingError(f"tracking URI {uri!r} is not allowed ({_why_not(uri, scheme)}); {allowed}")


DB_DRIVERS = {"postgresql": ("psycopg2",), "postgres": ("psycopg2",), "mysql": ("MySQLdb", "pymysql"),
              "mssql": ("pyodbc", "pymssql")}  # SQLAlchemy's default driver modules of MLflow's database stores


def _why_not(uri: str, scheme: str) -> str:
    """Why a tracking URI outside TRACKING_SCHEMES is refused, in the user's words."""
    import importlib.util

    base = scheme.split("+", 1)[0]
    if base in DB_DRIVERS:
        drivers = DB_DRIVERS[base]
        installed = any(importlib.util.find_spec(m) for m in drivers)
        return (f"a {base} database store{'' if installed else ' (and no driver for it, ' + ' or '.join(drivers)}"
                f"{'' if installed else ', is installed)'}: MLflow would put its artifacts in ./mlruns of the "
                f"working folder; serve it with `mlflow server --backend-store-uri {uri}` and pass http://HOST:PORT")
    return {"": "not a URI: a bare path", "file": "MLflow's folder store; this project records into a SQLite file",
            "databricks": "Databricks needs a workspace and credentials this project does not set up"}.get(
        scheme, f"scheme {scheme}: is not a tracking store this project can open")


def _check_sqlite(uri: str, allowed: str) -> None:
    """A SQLite URI names a file (new or an MLflow store) in a writable folder: `sqlite:///` alone
    would be no file at all (MLflow loses the records), a folder makes SQLite retry for minutes."""
    db = sqlite_path(uri)
    if db is None:  # sqlite:// (an in-memory store: gone when the command ends) or sqlite:x
        raise TrackingError(f"tracking URI {uri!r} is not allowed (no file: sqlite:/// then a path); {allowed}")
    text = uri[len("sqlite:///"):]  # as typed: Path drops a trailing slash
    if not text.strip() or text.endswith("/") or db.name in ("", ".", ".."):
        raise TrackingError(f"tracking URI {uri!r} names no file; {allowed}")
    if db.is_dir():
        raise TrackingError(f"tracking URI {uri!r} names a folder, not a file; {allowed}")
    if db.exists() and not db.is_file():
        raise TrackingError(f"tracking URI {uri!r} names {db}, which is not a regular file; {allowed}")
    parent = db.parent if str(db.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TrackingError(f"tracking URI {uri}: folder {parent} does not exist or is not writable")


def _check_server(uri: str, timeout: float) -> None:
    """A tracking server answers /health and lets this client use its API (read-only requests)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"tracking URI {uri} answered HTTP {r.status} at /health")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrackingError(f"tracking URI {uri} does not answer ({getattr(e, 'reason', e)}); "
                            "start the server or pass another --tracking-uri") from None
    # /health answers whatever the client; the API may still refuse it (MLflow 3 rejects Host
    # headers outside --allowed-hosts, a proxy may want credentials): ask it once, read-only
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                    timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        body = " ".join(e.read(300).decode(errors="replace").split())
        raise TrackingError(f"tracking URI {uri} answers /health but refuses its API (HTTP {e.code}: "
                            f"{body}); allowed: a server that accepts this client (for MLflow 3: "
                            "mlflow server --allowed-hosts HOST:PORT)") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrackingError(f"tracking URI {uri} does not answer its API ({getattr(e, 'reason', e)}); "
                            "start the server or pass another --tracking-uri") from None


@dataclass
class Trial:
    key: str  # unique within the study: names the checkpoint folder, tags the MLflow run
    config: TrialConfig
    tags: dict = field(default_factory=dict)  # extra MLflow tags (e.g. setting, ablation)
    title: str = ""  # the MLflow run name, e.g. "s3 IQA-LS MIX_blur seed0" (default: the key)


@dataclass
class Search:
    """An adaptive search a study runs after its grid trials (`study.tuning.run_search`): Optuna
    proposes each trial's TrialConfig fields through `suggest`, ASHA stops weak trials early. The
    trials report the objective (min of `objective_of`) on the epochs they evaluate."""
    base: TrialConfig  # what every search trial shares (schedule, data, seed, eval_every)
    n_trials: int
    suggest: Callable  # (Optuna trial) -> (TrialConfig field overrides, extra MLflow tags)
    objective_of: tuple  # reported metric names; objective = their minimum
    grace_period: int = 1  # ASHA: epochs before the first stop; an epoch the trials evaluate
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    sampler_seed: int = 0  # TPE sampler seed
    key_format: str = "search-{n}"  # trial key from the Optuna trial number n
    metric: str = "objective"
    mode: str = "max"
    tags: dict = field(default_factory=dict)  # MLflow tags of every search trial
    parent_tags: dict = field(default_factory=dict)  # MLflow tags of the study's parent run

    def __post_init__(self):
        # selection reads the validation split only: an objective on a test metric would fit the
        # choice to the test set that is then reported as if it were independent of it
        from trainables.metric_names import VAL_PREFIX

        test = [m for m in self.objective_of if not m.startswith(VAL_PREFIX)]
        if test:
            raise StudyError(f"search objective {test} is not allowed; allowed: validation metrics "
                             f"({VAL_PREFIX}*, e.g. {VAL_PREFIX}acc_mean_all): the test sets only report")
        if not self.base.val_size:
            raise StudyError("a search needs a validation split (val_size >= 1); allowed: --val-size N >= 1")

    def key(self, number: int) -> str:
        return self.key_format.format(n=number)

    @property
    def evals(self) -> int:
        """Evaluations a search trial that is not stopped early makes (for the time estimate)."""
        e, every = self.base.epochs, self.base.eval_every
        return len({k for k in range(1, e + 1) if k == e or (every and k % every == 0)})


class TrackingLost(RuntimeError):
    """The tracking store stopped answering mid-study; the message is the one line the user sees."""


@dataclass(frozen=True)
class StudySpec:
    # --- the study and its records
    name: str
    preset: str
    seeds: int
    tracking_uri: str
    experiment: str
    storage: str  # as given (resolved and checked for writing by the runner's preflight)
    out: str | None  # tables and plots (None: results/<name>)
    resume: bool = False
    # --- how it runs
    executor: str = "ray"
    device: str = "auto"  # the flag: auto | cpu | cuda | cuda:N
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    pack: str = "auto"
    packing: bool = False  # --pack resolved: auto packs on CUDA
    pack_size: int = 16
    precision: str = "fp32"  # --precision resolved for the device
    step_impl: str = "auto"  # --step-impl (a run field: the captured step replays the eager kernels)
    pack_data: str = "per_member"  # --pack-data (a run field: the batched data path is bit-identical on a CPU)
    pack_eval: str = "per_member"  # --pack-eval (a run field: the vmapped evaluation agrees within 1e-5)
    address: str | None = None
    node_wait_s: float = 600.0  # --node-wait: how long a cluster may take to hold a trial (study.tuning)
    max_failures: int = 3
    progress_every: float = 10.0
    estimate_only: bool = False
    verbose: bool = False  # --verbose: the full tables and a line per finished trial
    # --- what it was started with (the parent run's params, the manifest, the description)
    flags: dict = field(default_factory=dict)
    command: str = ""

    @property
    def run_device(self) -> str:
        """Where each trial runs: "cuda" when it gets a GPU share, else "cpu"."""
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def visible_gpu(self) -> int | None:
        """--device cuda:N with GPUs: the one GPU a local run may see (its trials then call it cuda:0)."""
        return int(self.device[5:]) if self.device.startswith("cuda:") and self.gpus_per_trial > 0 else None

    @property
    def probe_device(self) -> str:
        """The device the plan's throughput probe measures in the driver."""
        return self.device if self.visible_gpu is not None else self.run_device

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_trial))

    @classmethod
    def from_args(cls, args, cuda_available: bool | None = None) -> "StudySpec":
        """The spec of the command's flags; a bad value is a SpecError (one line)."""
        if cuda_available is None:
            import torch
            cuda_available = torch.cuda.is_available()
        name, executor, device, address = args.name, getattr(args, "executor", "ray"), args.device, args.address
        _check_where(name, executor, device, address, cuda_available)
        _check_numbers(args)
        if not address:  # this machine runs the trials: a request it can never hold would wait forever
            _check_machine(args.cpus_per_trial, args.gpus_per_trial, cuda_available)
        cuda = device.startswith("cuda") or (device == "auto" and cuda_available)
        # packing (trainables.packed): the grid's trials that share a schedule train as one model; worth
        # it on a GPU (one small model leaves it idle), not on a CPU (no idle units to fill)
        packing = args.pack == "on" or (args.pack == "auto" and cuda)
        # the local executor runs one trial at a time: by default it gets every core of this machine
        cpus = args.cpus_per_trial if args.cpus_per_trial is not None else (
            float(os.cpu_count() or 1) if executor == "local" else 1.0)
        # a pack fills a GPU by itself; single trials share one (fractional GPUs); a local run uses one
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (
            (1.0 if packing or executor == "local" else 0.25) if cuda else 0.0)
        run_device = "cuda" if gpus > 0 else "cpu"
        precision = getattr(args, "precision", "auto")
        if precision == "auto":  # bf16 on CUDA (the fast path), fp32 on a CPU (bit-reproducible)
            precision = "bf16" if run_device == "cuda" else "fp32"
        flags = {k: v for k, v in vars(args).items() if v is not None}
        command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *_command_argv()])
        spec = cls(name=name, preset=args.preset, seeds=args.seeds, tracking_uri=args.tracking_uri,
                   experiment=args.experiment, storage=args.storage, out=args.out, resume=bool(args.resume),
                   executor=executor, device=device, cpus_per_trial=cpus, gpus_per_trial=gpus, pack=args.pack,
                   packing=packing, pack_size=args.pack_size, precision=precision,
                   step_impl=getattr(args, "step_impl", "auto"),
                   pack_data=getattr(args, "pack_data", "per_member"),
                   pack_eval=getattr(args, "pack_eval", "per_member"), address=address,
                   node_wait_s=getattr(args, "node_wait", 600.0),
                   max_failures=args.max_failures, progress_every=args.progress_every,
                   estimate_only=bool(getattr(args, "estimate_only", False)),
                   verbose=bool(getattr(args, "verbose", False)), flags=flags, command=command)
        _check_places(spec)
        return spec


def _check_where(name, executor, device, address, cuda_available: bool) -> None:
    """The study's name, executor, device and cluster address, and how they go together."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise SpecError(f"--name {name!r} is not allowed; allowed: 1-100 characters of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit")
    if address is not None and not address.strip():
        raise SpecError(f"--address {address!r} is not allowed (empty); allowed: HOST:PORT, auto or ray://HOST:PORT "
                        "(or no --address: a Ray of this machine)")
    if executor not in EXECUTORS:
        raise SpecError(f"--executor {executor} is not allowed; allowed: {', '.join(EXECUTORS)}")
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise SpecError(f"--device {device} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    if executor == "local" and address:
        raise SpecError(f"--address {address} is not allowed with --executor local (it runs in this process); "
                        "allowed: --executor ray --address ...")
    if device.startswith("cuda:") and address:
        raise SpecError(f"--device {device} is not allowed with --address: Ray gives each trial its GPU; "
                        "allowed: --device cuda (or auto, cpu)")
    if device.startswith("cuda") and not address and not cuda_available:
        raise SpecError(f"--device {device}: CUDA is not available on this machine; allowed here: auto, cpu")
    if device.startswith("cuda:"):
        import torch
        n = torch.cuda.device_count()
        if int(device[5:]) >= n:
            raise SpecError(f"--device {device}: this machine has {n} visible GPU(s); allowed: cuda:0 .. "
                            f"cuda:{n - 1}")


def _check_numbers(args) -> None:
    """The resources, packing, cadence, precision and step flags."""
    for flag, v, ok, allowed in (
            ("--cpus-per-trial", args.cpus_per_trial, args.cpus_per_trial is None or args.cpus_per_trial > 0,
             "a number > 0"),
            ("--gpus-per-trial", args.gpus_per_trial, args.gpus_per_trial is None or args.gpus_per_trial >= 0,
             "a number >= 0"),
            ("--pack", args.pack, args.pack in PACK_MODES, ", ".join(PACK_MODES)),
            ("--pack-size", args.pack_size, args.pack_size >= 1, "an integer >= 1"),
            ("--max-failures", args.max_failures, args.max_failures >= 0, "an integer >= 0"),
            ("--node-wait", getattr(args, "node_wait", 600.0), 0 <= getattr(args, "node_wait", 600.0) <= 86400,
             "seconds 0..86400"),
            ("--progress-every", args.progress_every, args.progress_every > 0, "a number of seconds > 0"),
            ("--precision", getattr(args, "precision", "auto"), getattr(args, "precision", "auto")
             in PRECISION_CHOICES, ", ".join(PRECISION_CHOICES)),
            ("--step-impl", getattr(args, "step_impl", "auto"), getattr(args, "step_impl", "auto")
             in STEP_IMPLS, ", ".join(STEP_IMPLS)),
            ("--pack-data", getattr(args, "pack_data", "per_member"), getattr(args, "pack_data", "per_member")
             in PACK_DATA, ", ".join(PACK_DATA)),
            ("--pack-eval", getattr(args, "pack_eval", "per_member"), getattr(args, "pack_eval", "per_member")
             in PACK_EVAL, ", ".join(PACK_EVAL))):
        if not ok:
            raise SpecError(f"{flag} {v} is not allowed; allowed: {allowed}")


def _check_machine(cpus: float | None, gpus: float | None, cuda_available: bool) -> None:
    """Without --address the trials run on this machine: a trial asking for more CPUs or GPUs than it
    has would never be scheduled (Ray waits for it forever), and a GPU share without CUDA is refused
    rather than planned for cuda/bf16."""
    n_cpus = os.cpu_count() or 1
    if cpus is not None and cpus > n_cpus:
        raise SpecError(f"--cpus-per-trial {cpus:g} is more than this machine's {n_cpus} CPUs; allowed: a number "
                        f"> 0 and <= {n_cpus} (or --address of a cluster whose nodes have more)")
    if gpus:
        n_gpus = 0
        if cuda_available:
            import torch
            n_gpus = torch.cuda.device_count()
        if not n_gpus:
            raise SpecError(f"--gpus-per-trial {gpus:g}: CUDA is not available on this machine; allowed here: 0 "
                            "(or --address of a cluster with GPUs)")
        if gpus > n_gpus:
            raise SpecError(f"--gpus-per-trial {gpus:g} is more than this machine's {n_gpus} GPU(s); allowed: "
                            f"a number >= 0 and <= {n_gpus}")


def _check_places(spec: "StudySpec") -> None:
    """Where the study writes and records, checked before any data is read (cheap, writes nothing):
    the experiment's name, the tracking URI (`check_tracking_uri`), the --storage and --out folders
    (study.storage.writable_folder), and the cluster of --address."""
    from study.storage import check_storage, writable_folder

    if not isinstance(spec.experiment, str) or not spec.experiment.strip():
        raise SpecError(f"--experiment {spec.experiment!r} is not allowed (empty); allowed: an MLflow experiment "
                        "name, e.g. iqa-ls")
    try:
        check_tracking_uri(spec.tracking_uri)
    except TrackingError as e:
        raise SpecError(f"--tracking-uri: {e}") from None
    check_storage(spec.storage)
    writable_folder("--out", spec.out if spec.out is not None else str(Path("results") / spec.name))
    if spec.address:
        _check_cluster(spec.address)


CLUSTER_TIMEOUT_S = 10.0  # how long --address's head may take to accept a connection


def _check_cluster(address: str, timeout: float = CLUSTER_TIMEOUT_S) -> None:
    """--address names a Ray cluster that answers: its head's port accepts a connection within
    `timeout`. Ray's own connect retries for minutes (`garbage:99999` waits forever) and fails after
    the study's parent run and manifest are written; this check fails first, writing nothing."""
    import socket

    allowed = "allowed: the HOST:PORT of a running Ray head (ray start --head), auto on one of its nodes, or " \
              "ray://HOST:PORT"
    if address.startswith("ray://"):
        target = address[len("ray://"):].rstrip("/")
    else:
        try:  # Ray's own reading of the address: auto -> the cluster this node runs, if any
            from ray._private.services import canonicalize_bootstrap_address
            target = canonicalize_bootstrap_address(address)
        except Exception as e:
            raise SpecError(f"--address {address}: no Ray cluster found ({' '.join(str(e).split())}); "
                            f"{allowed}") from None
        if target is None:  # "local": Ray starts one on this machine
            return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError, OverflowError) as e:
        raise SpecError(f"--address {address}: the Ray head at {target} does not answer "
                        f"({' '.join(str(e).split()) or type(e).__name__}); {allowed}") from None
    _check_driver_joins(address, target if not address.startswith("ray://") else address, allowed)


DRIVER_JOIN_TIMEOUT_S = 20.0  # a throw-away driver joins a live cluster in ~4 s; the refusal stays within ~30 s


def _check_driver_joins(address: str, target: str, allowed: str) -> None:
    """A port that accepts is not yet a cluster a driver can join (a stale or dying head, another
    session's GCS that `auto` found): a throw-away driver joins it in a subprocess within
    DRIVER_JOIN_TIMEOUT_S, so that a failure is this one line, before the parent run and the manifest
    are written, rather than Ray's minute of retries and a traceback after them."""
    import subprocess

    code = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
            "logging_level='ERROR'); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        res = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True, env=env,
                             timeout=DRIVER_JOIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SpecError(f"--address {address}: no Ray driver could join the cluster at {target} within "
                        f"{DRIVER_JOIN_TIMEOUT_S:.0f} s; {allowed}") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise SpecError(f"--address {address}: a Ray driver could not join the cluster at {target} "
                        f"({why[:300]}); {allowed}")


def _command_argv() -> list[str]:
    """The command line as typed: `-m module` for a module run (sys.argv[0] is then its file path)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (["-m", spec.name] if spec is not None and spec.name else [sys.argv[0]]) + sys.argv[1:]


@dataclass
class StudyRun:
    """The study as this command runs it, handed from step to step by `study.runner.run_study`: the
    checked spec and trials (on the run's device, threads and precision), what the checks found, then
    the lock and the records once they are taken and opened."""
    spec: StudySpec
    kind: str  # e.g. "table2", "ablate-tmap"
    trials: list[Trial]
    search: Search | None
    storage: str  # --storage checked (study.storage.check_storage): a local folder made absolute, or a URI
    train: Any  # the training split (trainables.data), for the plan and the parent run's tags
    n_test: int  # images of the test split
    faults: dict  # trial key -> fault kind (IQA_LS_FAULT: tests only)
    settings: dict  # what defines the study, as its manifest records it (study.resume.study_settings)
    out: Path  # tables and plots
    started: float  # time.time() when this command started
    lock: Any = None  # the driver lock (study.lock.StudyLock); None with --estimate-only
    rec: Any = None  # the records (study.tracking.StudyRecorder); None: an estimate with no store yet
    notes: list = field(default_factory=list)  # what the plan must say about the inputs (study.runner.check_sizes)

    @property
    def n_search(self) -> int:
        return self.search.n_trials if self.search is not None else 0

    @property
    def n_trials(self) -> int:
        """The grid's trials and the search's."""
        return len(self.trials) + self.n_search

    @property
    def first_config(self) -> TrialConfig:
        """The config the plan describes and the probe measures: the grid's first, else the search's."""
        return self.trials[0].config if self.trials else self.search.base
