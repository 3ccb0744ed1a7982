"""Offline checks of the shipped Ray cluster-launcher configs (cluster*.yaml, docs/cluster.md).

Ray's own validator: `prepare_config` (merges the provider's defaults.yaml, which is a file read;
for `provider: type: local` it also builds the single node type from head_ip/worker_ips) and then
`validate_config` (jsonschema against ray/autoscaler/ray-schema.json + Ray's own consistency
checks). Neither needs AWS: no credentials, no network. The tests prove that by running them
with sockets blocked and AWS credentials removed. `ray up` goes on to call the provider's
bootstrap (`bootstrap_aws`: IAM, key pair, subnets, security groups, AMI). That needs a real AWS
account and is not exercised here.

Ray's schema does not look inside an AWS `node_config` (it is passed as-is to EC2
RunInstances), so the AWS node_configs are also checked offline against botocore's bundled
RunInstances input shape.

We also check the invariants the study relies on: GPU workers scale from 0; the head runs no
trials; the Tune storage path is reachable from every node; the checkout is mounted and
installed on every node; the Ray dashboard and MLflow bind to loopback only; the documented
command matches the config. Finally, the flags used in the commands must exist in the
installed `ray start` / `mlflow server`, and every command must parse as shell.
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AWS_FILE = ROOT / "cluster.yaml"
DOCS = ROOT / "docs" / "cluster.md"
SHIPPED = sorted(ROOT.glob("cluster*.yaml"))
IDS = [p.name for p in SHIPPED]
REMOTE_SCHEMES = {"s3", "gs", "gcs", "abfs", "az"}  # storage every node reaches by URI


# ------------------------------------------------------------------------------------ helpers
def load(path: Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def meta(config: dict) -> dict:
    return config["metadata"]["iqa_ls"]


def is_aws(config: dict) -> bool:
    return config["provider"]["type"] == "aws"


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in config.get(k) or []]


def segment(commands: list[str], program: str) -> str:
    """The arguments of `program` (e.g. 'ray start --head') in the one command that runs it,
    up to the next shell operator."""
    hits = [c for c in commands if program in c]
    assert len(hits) == 1, f"expected exactly one command running {program!r}, got {hits}"
    rest = hits[0].split(program, 1)[1]
    return re.split(r"\s(?:;|&&|\|\||\||>|&)(?:\s|$)|;", rest)[0]


def flags(seg: str) -> dict[str, str | None]:
    """--name=value / --name value / --name -> {name: value or None}."""
    out: dict[str, str | None] = {}
    toks = shlex.split(seg)
    for i, tok in enumerate(toks):
        if tok.startswith("--"):
            name, eq, val = tok[2:].partition("=")
            if not eq and i + 1 < len(toks) and not toks[i + 1].startswith("--"):
                val = toks[i + 1]
            out[name] = val if (eq or val) else None
    return out


def study_flags(config: dict) -> dict[str, str | None]:
    cmd = meta(config)["study_command"]
    return flags(cmd.split("python -m study.table2", 1)[1])


def head_start(config: dict) -> dict[str, str | None]:
    return flags(segment(config["head_start_ray_commands"], "ray start --head"))


def mlflow_server(config: dict) -> dict[str, str | None]:
    return flags(segment(config["head_start_ray_commands"], "mlflow server"))


@pytest.fixture
def offline(monkeypatch):
    """No network and no AWS credentials: anything that tries to reach AWS fails loudly."""
    def refuse(*_a, **_k):
        raise AssertionError("network access attempted during an offline config check")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def prepared(path_or_config) -> dict:
    config = load(path_or_config) if isinstance(path_or_config, Path) else path_or_config
    return prepare_config(copy.deepcopy(config))


# ------------------------------------------------------------------- Ray's own validator
def test_the_aws_config_is_shipped():
    assert AWS_FILE in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_ray_validator_accepts_shipped_file(path, offline):
    config = prepared(path)
    validate_config(config)  # raises on any schema or consistency error
    assert config["available_node_types"][config["head_node_type"]]


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_misspelled_top_level_key_is_rejected(path, offline):
    bad = load(path)
    bad["max_wrokers"] = bad.pop("max_workers", 4)
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        validate_config(prepared(bad))


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_misspelled_nested_key_is_rejected(path, offline):
    bad = load(path)
    if "available_node_types" in bad:  # cloud: a key inside a node type
        worker = next(k for k in bad["available_node_types"] if k != bad["head_node_type"])
        node_type = bad["available_node_types"][worker]
        node_type["min_wrokers"] = node_type.pop("min_workers", 0)
        typo = "min_wrokers"
    else:  # provider: local has no node types in the file (Ray builds one); use auth
        bad["auth"]["ssh_usr"] = bad["auth"].pop("ssh_user")
        typo = "ssh_usr"
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validate_config(prepared(bad))


# ------------------------------------------------------------ AWS node_config vs. EC2 API
def _run_instances_errors(node_config: dict) -> str:
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator
    shape = (botocore_session.get_session().get_service_model("ec2")
             .operation_model("RunInstances").input_shape)
    params = copy.deepcopy(node_config)
    params.pop("SubnetIds", None)  # Ray-only key: resolved to SubnetId before the call
    params.update(MinCount=1, MaxCount=1)  # added by Ray's node provider
    report = ParamValidator().validate(params, shape)
    return report.generate_report() if report.has_errors() else ""


def test_aws_node_configs_are_valid_run_instances_parameters(offline):
    config = load(AWS_FILE)
    for name, node_type in config["available_node_types"].items():
        assert _run_instances_errors(node_type["node_config"]) == "", name


def test_misspelled_node_config_key_is_caught_by_the_ec2_check(offline):
    node_config = copy.deepcopy(
        load(AWS_FILE)["available_node_types"]["gpu_worker"]["node_config"])
    node_config["InstanceTyp"] = node_config.pop("InstanceType")
    assert "InstanceTyp" in _run_instances_errors(node_config)


# ---------------------------------------------------------------- invariants we rely on
def _gpu_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items()
            if v.get("resources", {}).get("GPU", 0) > 0}


def test_gpu_workers_scale_from_zero_on_spot(offline):
    raw = load(AWS_FILE)
    assert "max_workers" in raw and "idle_timeout_minutes" in raw  # set explicitly, not defaults
    config = prepared(AWS_FILE)
    gpu = _gpu_types(config)
    assert gpu, "no node type advertises a GPU"
    for name, node_type in gpu.items():
        assert name != config["head_node_type"]
        assert node_type["min_workers"] == 0, name
        workers = node_type["max_workers"]
        assert workers >= 1 and workers <= config["max_workers"], name
        # spot is safe only because trials checkpoint to shared storage (tested below)
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        # workers write checkpoints to S3 themselves; Ray gives workers no instance profile
        assert node_type["node_config"].get("IamInstanceProfile"), name


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_head_runs_no_trials(path, offline):
    """Design choice: the head hosts GCS, autoscaler, driver and MLflow; trials go to workers."""
    config = prepared(path)
    start = head_start(config)
    assert start.get("num-cpus") == "0" and start.get("num-gpus") == "0", start
    if is_aws(config):  # the launcher passes these to the head's raylet (RAY_OVERRIDE_RESOURCES)
        head = config["available_node_types"][config["head_node_type"]]
        assert head["resources"] == {"CPU": 0, "GPU": 0}
        assert head["max_workers"] == 0
        assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand"


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_storage_path_is_reachable_from_every_node(path):
    config = load(path)
    m = meta(config)
    storage = m["storage_path"]
    assert study_flags(config)["storage"] == storage
    bad_local = ("~", ".", "/tmp", "/home", "/root", "ray_results")
    if is_aws(config):
        assert urlparse(storage).scheme in REMOTE_SCHEMES, storage
    else:  # on-prem: a path on the shared mount, which setup checks is mounted on every node
        shared = m["shared_mount"].rstrip("/")
        assert storage.startswith(shared + "/"), storage
        assert any(f"mountpoint -q {shared}" in c for c in config["setup_commands"])
    assert not storage.startswith(bad_local), storage


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_checkout_is_mounted_and_installed_on_every_node(path, offline):
    config = prepared(path)
    project_dir = meta(config)["project_dir"]
    assert project_dir in config["file_mounts"], config["file_mounts"]
    local = (ROOT / config["file_mounts"][project_dir]).resolve()  # `ray up` runs from ROOT
    assert local == ROOT and (local / "pyproject.toml").is_file()
    assert ".gitignore" in config["rsync_filter"]  # results/caches stay local
    install = f"-e {project_dir}"
    # setup_commands are merged into both lists by prepare_config
    assert any(install in c for c in config["head_setup_commands"])
    assert any(install in c for c in config["worker_setup_commands"])
    assert any('"ray[default]==2.60.0"' in c for c in config["worker_setup_commands"])
    assert meta(config)["study_command"].startswith(f"cd {project_dir} && ")


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_dashboard_and_mlflow_bind_to_loopback_only(path):
    config = load(path)
    assert not any("0.0.0.0" in c for c in all_commands(config))
    assert head_start(config)["dashboard-host"] == "127.0.0.1"
    server = mlflow_server(config)
    m = meta(config)
    uri = urlparse(m["tracking_uri"])
    assert server["host"] == "127.0.0.1" == uri.hostname
    assert int(server["port"]) == uri.port
    assert study_flags(config)["tracking-uri"] == m["tracking_uri"]
    assert study_flags(config)["address"] == "auto"  # the driver runs on the head
    # artifacts are proxied by the server (default --serve-artifacts), never a client path
    assert "no-serve-artifacts" not in server
    assert server["artifacts-destination"] == m["artifacts_destination"]
    backend = server["backend-store-uri"]
    assert backend.startswith("sqlite:///$HOME/")  # the head's local disk
    if is_aws(config):
        assert urlparse(m["artifacts_destination"]).scheme == "s3"
    else:
        assert m["artifacts_destination"].startswith(m["shared_mount"])
        assert m["shared_mount"] not in backend  # SQLite on NFS is unsafe


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_docker_is_off(path, offline):
    assert not load(path).get("docker")
    assert prepared(path).get("docker") in (None, {})


def test_every_placeholder_is_listed_in_the_knobs_header():
    text = AWS_FILE.read_text()
    header = text.split("\ncluster_name:", 1)[0]
    body = "\n".join(line.split(" #", 1)[0] for line in text.splitlines()
                     if not line.lstrip().startswith("#"))
    placeholders = set(re.findall(r"\bBUCKET\b|ami-REPLACE_[A-Z0-9_]+|iqa-ls-worker-s3", body))
    assert {"BUCKET", "iqa-ls-worker-s3"} <= placeholders and len(placeholders) >= 4
    for p in placeholders:
        assert p in header, f"{p} is used in {AWS_FILE.name} but not listed in its KNOBS header"


# ------------------------------------------------------------------------------- the docs
def _squash(s: str) -> str:
    return " ".join(s.split())


def test_docs_show_the_configured_study_command_and_lifecycle():
    docs = _squash(DOCS.read_text())
    assert _squash(meta(load(AWS_FILE))["study_command"]) in docs
    for needle in ("ray up cluster.yaml", "ray exec cluster.yaml --tmux", "--resume",
                   "ray dashboard cluster.yaml", "ray attach cluster.yaml -p 5000",
                   "ray down cluster.yaml", "max_failures"):
        assert needle in docs, needle


def test_docs_never_use_a_local_storage_path():
    shared = {meta(load(p)).get("shared_mount") for p in SHIPPED} - {None}
    values = re.findall(r"--storage[ =]([^\s`\"']+)", DOCS.read_text())
    assert values
    for v in values:
        ok = urlparse(v).scheme in REMOTE_SCHEMES or any(v.startswith(s + "/") for s in shared)
        assert ok, f"docs/cluster.md uses a storage path not every node can reach: {v}"


# ------------------------------------------------------------------- commands themselves
@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_commands_parse_as_shell(path):
    bash = shutil.which("bash")
    for cmd in all_commands(load(path)):
        shlex.split(cmd)  # balanced quotes (a stray YAML ' #' comment would break this)
        if bash:
            r = subprocess.run([bash, "-n", "-c", cmd], capture_output=True, text=True)
            assert r.returncode == 0, f"{cmd!r}: {r.stderr}"


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_flags_exist_in_the_installed_ray_and_mlflow(path):
    import ray.scripts.scripts as ray_cli
    mlflow_cli = pytest.importorskip("mlflow.cli")

    def options(cmd):
        return {o[2:] for p in cmd.params for o in p.opts if o.startswith("--")}

    config = load(path)
    ray_start = options(ray_cli.start)
    worker = flags(segment(config["worker_start_ray_commands"], "ray start"))
    for used in (head_start(config), worker):
        assert set(used) <= ray_start, set(used) - ray_start
    server = set(mlflow_server(config))
    known = options(mlflow_cli.cli.commands["server"])
    assert server <= known, server - known
