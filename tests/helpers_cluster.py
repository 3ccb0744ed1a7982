"""A real multi-node Ray cluster on one machine, for the fault tests (tests/test_multinode.py).

Each node is its own `ray start --block` process tree: a head (Ray GCS + raylet, no CPUs, the MLflow
server and the study driver, as on the real cluster: docs/cluster.md) and worker nodes with one CPU
each. Where this process may create Linux network namespaces (root with `ip netns`), every node
lives in its own namespace with its own address on a private bridge (10.77.0.0/24, inside
namespaces this helper creates and deletes; nothing is configured in the host's namespace), so Ray
sees a cluster of distinct hosts and "lose a node" is "SIGKILL every process of that namespace".
Without those rights the nodes are separate processes, each on its own loopback address
(127.77.0.N: Ray would replace 127.0.0.1 by the host's address) with its own --temp-dir and ports,
and a node is its `ray start` process tree. `Cluster.mode` says which one ran.

Nothing here touches other Ray instances on the machine: no `ray stop` (it kills every Ray process
of the host), distinct --temp-dir per node (so /tmp/ray/ray_current_cluster is never written), and
processes are only ever killed by the PIDs this helper started or found inside its own namespaces.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers_mlflow import free_port

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.77.0"  # private: exists only inside the namespaces created below
LOOPBACK = "127.77.0"  # without namespaces: 127/8 is all loopback on Linux, one address per node
RAY_PORT = 6379
MLFLOW_PORT = 5000
NS_PREFIX = "iqals"  # namespace names: iqals-<pid of the test process>-<node>


def run(cmd: list[str], check=True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def netns_available() -> bool:
    """True when this process can create (and delete) a network namespace with a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{NS_PREFIX}-{os.getpid()}-probe"
    try:
        run(["ip", "netns", "add", probe])
        run(["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        run(["ip", "netns", "del", probe], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _ns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def remove_stale_namespaces() -> None:
    """Namespaces of earlier test processes (by this helper's naming) whose process is gone."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}-(\d+)-\w+", name)
        if m and not _pid_alive(int(m.group(1))):
            for pid in _ns_pids(name):
                _kill(pid)
            run(["ip", "netns", "del", name], check=False)


def _kill(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    """pid and every process below it (read from /proc; no psutil needed)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def proc_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Node:
    name: str
    ip: str
    netns: str | None
    proc: subprocess.Popen | None = None
    temp_dir: Path | None = None
    log: Path | None = None
    killed: bool = False


@dataclass
class Cluster:
    """Head + workers. `prefix(node)` wraps a command so it runs on that node."""
    root: Path
    mode: str = "auto"  # "netns" | "loopback" | "auto" (netns when possible)
    nodes: dict[str, Node] = field(default_factory=dict)
    mlflow: subprocess.Popen | None = None
    ray_port: int = RAY_PORT
    mlflow_port: int = MLFLOW_PORT
    _next_ip: int = 1

    def __post_init__(self):
        if self.mode == "auto":
            self.mode = "netns" if netns_available() else "loopback"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="iqals-ray-", dir="/tmp"))
        if self.mode == "netns":
            remove_stale_namespaces()
        else:
            self.ray_port, self.mlflow_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        self.env.update(PYTHONPATH=str(REPO), IQA_LS_CACHE=str(self.root / "cache"),
                        RAY_USAGE_STATS_ENABLED="0",
                        # Ray 2.60 token auth, with this cluster's own token (not ~/.ray/auth_token):
                        # a driver joining by explicit address only sends it in token mode
                        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                        # a lost node is noticed within ~3 s (Ray's defaults wait several times longer)
                        RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                        RAY_health_check_failure_threshold="3")

    # ------------------------------------------------------------------ addresses
    @property
    def head(self) -> Node:
        return self.nodes["head"]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{self.ray_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.head.ip}:{self.mlflow_port}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "server.db"

    def prefix(self, node: str) -> list[str]:
        ns = self.nodes[node].netns
        return ["ip", "netns", "exec", ns] if ns else []

    # ------------------------------------------------------------------ network
    def _new_node(self, name: str) -> Node:
        if self.mode == "loopback":  # its own loopback address (Ray turns 127.0.0.1 into the host's)
            node = Node(name, f"{LOOPBACK}.{self._next_ip}", None)
            self._next_ip += 1
        else:
            ns = f"{NS_PREFIX}-{os.getpid()}-{name}"
            ip = f"{SUBNET}.{self._next_ip}"
            self._next_ip += 1
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if name == "head":  # the bridge lives in the head's namespace
                run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "br0"])
                run(["ip", "-n", ns, "link", "set", "br0", "up"])
            else:  # a veth pair: one end on the head's bridge, the other this node's eth0
                head_ns, port = self.head.netns, f"v{name}"[:15]
                run(["ip", "-n", head_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                     "netns", ns])
                run(["ip", "-n", head_ns, "link", "set", port, "master", "br0", "up"])
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
                run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            node = Node(name, ip, ns)
        self.nodes[name] = node
        return node

    # ------------------------------------------------------------------ processes
    def popen(self, node: str, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(self.prefix(node) + cmd, cwd=self.root, env={**self.env, **(env or {})},
                                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def start_node(self, name: str, cpus: int) -> Node:
        node = self._new_node(name)
        # each node its own, never /tmp/ray; short, since Ray's socket paths must fit in 107 bytes
        node.temp_dir = self.ray_tmp / name
        node.log = self.root / "logs" / f"ray-{name}.log"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address", node.ip,
               "--num-cpus", str(cpus), "--num-gpus", "0", "--temp-dir", str(node.temp_dir),
               "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
        if self.mode == "loopback":  # agents bind ports on all addresses: one host, so distinct ports
            cmd += ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port",
                    str(free_port()), "--runtime-env-agent-port", str(free_port())]
        if name == "head":
            cmd += ["--head", "--port", str(self.ray_port), "--include-dashboard", "false"]
        else:
            cmd += ["--address", self.address]
        node.proc = self.popen(name, cmd, node.log)
        return node

    def start(self, workers: int = 2, timeout: float = 120) -> "Cluster":
        self.start_node("head", cpus=0)
        art = self.root / "mlflow" / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        self.mlflow = self.popen("head", [sys.executable, "-m", "mlflow", "server", "--host", self.head.ip,
                                          "--port", str(self.mlflow_port), "--backend-store-uri",
                                          f"sqlite:///{self.mlflow_db}", "--artifacts-destination", str(art),
                                          # MLflow 3 refuses Host headers other than localhost and
                                          # private IPs unless listed (127.77.0.1 is neither)
                                          "--allowed-hosts", f"{self.head.ip},{self.head.ip}:{self.mlflow_port}",
                                          "--workers", "1"], self.root / "logs" / "mlflow.log")
        for i in range(1, workers + 1):  # `ray start --address` waits for the head's GCS itself
            self.start_worker(f"w{i}")
        self.wait_nodes(1 + workers, timeout)
        self.wait_mlflow(timeout)
        return self

    def start_worker(self, name: str, cpus: int = 1) -> Node:
        return self.start_node(name, cpus)

    def python(self, node: str, code: str, timeout: float = 120) -> str:
        """Run a Python snippet on a node (e.g. a Ray state query from the head); returns stdout."""
        res = subprocess.run(self.prefix(node) + [sys.executable, "-c", code], cwd=self.root, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"on {node}: {res.stderr[-2000:]}")
        return res.stdout

    def wait_nodes(self, n: int, timeout: float) -> list[dict]:
        """Block until exactly `n` nodes are alive (one Ray client on the head polls the GCS)."""
        code = f"""
import json, time, ray
t0 = time.time()
while True:
    try:
        ray.init(address={self.address!r}, logging_level="ERROR", log_to_driver=False)
        break
    except Exception:
        if time.time() - t0 > {timeout}: raise
        time.sleep(1)
while True:
    nodes = [{{"ip": x["NodeManagerAddress"], "id": x["NodeID"], "cpus": x["Resources"].get("CPU", 0)}}
             for x in ray.nodes() if x["Alive"]]
    if len(nodes) == {n}:
        print(json.dumps(nodes)); break
    if time.time() - t0 > {timeout}:
        raise SystemExit(f"{{len(nodes)}} of {n} nodes alive after {timeout}s")
    time.sleep(0.5)
"""
        probe = subprocess.Popen(self.prefix("head") + [sys.executable, "-c", code], cwd=self.root, env=self.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while probe.poll() is None:  # fail fast when a `ray start` dies instead of waiting it out
                self._check_started()
                time.sleep(0.5)
        finally:
            if probe.poll() is None:
                probe.kill()
        out, err = probe.communicate()
        if probe.returncode != 0:
            raise TimeoutError(f"{n} nodes not up: {err[-2000:]}; logs in {self.root / 'logs'}")
        import json
        return json.loads(out.strip().splitlines()[-1])

    def wait_mlflow(self, timeout: float) -> None:
        code = (f"import urllib.request, time\nfor _ in range({int(timeout)}):\n  try:\n"
                f"    urllib.request.urlopen({self.tracking_uri + '/health'!r}, timeout=1); break\n"
                f"  except OSError: time.sleep(1)\nelse: raise SystemExit('mlflow server not up')")
        self.python("head", code, timeout=timeout + 30)

    def _check_started(self):
        for node in self.nodes.values():
            if node.proc is not None and not node.killed and node.proc.poll() is not None:
                raise RuntimeError(f"ray start on {node.name} exited: {node.log.read_text()[-3000:]}")

    # ------------------------------------------------------------------ faults
    def node_pids(self, name: str) -> list[int]:
        node = self.nodes[name]
        if node.netns:
            return _ns_pids(node.netns)
        return descendants(node.proc.pid) if node.proc else []

    def node_id(self, name: str) -> str:
        """Ray's node ID of a node (from its raylet's command line)."""
        for pid in self.node_pids(name):
            m = re.search(r"--node_id=([0-9a-f]+)", proc_title(pid))
            if m and "raylet" in proc_title(pid).split()[0]:
                return m.group(1)
        raise LookupError(f"no raylet found on node {name}")

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of the node at once (raylet, its workers, agents): a lost host."""
        pids = self.node_pids(name)
        self.nodes[name].killed = True
        for pid in pids:
            _kill(pid)
        self.nodes[name].proc.wait(timeout=30)
        return pids

    def trial_processes(self) -> dict[str, list[int]]:
        """node -> PIDs of Tune trial actors (ray::ImplicitFunc) on it."""
        return {n: [p for p in self.node_pids(n) if proc_title(p).startswith("ray::ImplicitFunc")]
                for n in self.nodes}

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        procs = [n.proc for n in self.nodes.values() if n.proc] + ([self.mlflow] if self.mlflow else [])
        pids: list[int] = []
        for name in self.nodes:
            pids += self.node_pids(name)
        if self.mlflow:
            pids += descendants(self.mlflow.pid)
        for pid in set(pids):
            _kill(pid)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes.values():
            if node.netns:
                run(["ip", "netns", "del", node.netns], check=False)
        for node in self.nodes.values():  # keep Ray's logs beside the test's (the temp dir goes)
            logs = sorted(node.temp_dir.glob("session_*/logs")) if node.temp_dir else []
            if logs:
                shutil.copytree(logs[-1], self.root / "logs" / f"ray-{node.name}", dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if n.startswith(("events", "export"))])
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------ reading the MLflow store
def trial_progress(db: Path, study: str) -> dict[str, dict]:
    """trial key -> {run_id, status, node, last_step} of one study, straight from the server's SQLite
    file (read-only): the test process may not reach the server's address (another namespace)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status, "
            " (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'iqa_ls.trial_key'),"
            " (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'iqa_ls.node'),"
            " (SELECT max(step) FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'loss')"
            " FROM runs r WHERE EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid"
            "  AND t.key = 'iqa_ls.role' AND t.value = 'trial') AND EXISTS (SELECT 1 FROM tags t"
            "  WHERE t.run_uuid = r.run_uuid AND t.key = 'iqa_ls.study' AND t.value = ?)", (study,)).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        con.close()
    return {key: {"run_id": rid, "status": status, "node": node, "last_step": step or 0}
            for rid, status, key, node, step in rows if key}


def wait_for(pred, timeout: float, every: float = 0.2, what: str = "condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"{what} not met after {timeout:.0f}s")
