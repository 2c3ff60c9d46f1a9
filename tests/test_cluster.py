"""A real two-node Ray cluster on this machine, the service pointed at it with RAY_ADDRESS, PostgreSQL (issue 12).

Two ``ray start`` nodes with their own custom resources (``head_node`` and ``worker_node``, 2 CPUs each, a private
temp folder and free ports, so that no other Ray on the machine is touched):
1. a sweep of two trials that need 2 CPUs each runs one trial on each node (the trial rows name their node);
2. a discovery job that needs 2 CPUs starts on the worker node (the head is kept busy by a placeholder actor, then
   freed); the worker node is killed (kill -9 of its ``ray start``, raylet and worker processes); Ray restarts the
   job's actor on the head, the engine resumes from the checkpoint folder that both nodes read
   (``PLASTICITY_CHECKPOINT_DIR``), and the job succeeds with attempts >= 2 and resumed_from_episode > 0;
3. the database rows counted before the kill are all there afterwards, unchanged, plus the new job's.

Bounded: every wait has a timeout and the whole test at most 6 minutes; the nodes are killed at the end whatever
happens. Marked ``slow`` and ``postgres`` (it runs in ``make test``; ``make test-fast`` leaves it out).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ARTIFACTS, FINAL, REPO_ROOT, LiveServer, free_port, wait_for

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(360)]
RAY_BIN = Path(sys.executable).with_name("ray")
#: fast node-death detection (Ray system config through the environment of every node)
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}


# --- processes ----------------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 of a node: its ``ray start`` process, everything below it, and its process group."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Node:
    """One ``ray start --block`` node in its own session."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    node_id: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    """Head + worker node on 127.0.0.1; ``address`` is the GCS address for RAY_ADDRESS."""

    address: str
    temp_dir: Path
    auth: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    def logs(self) -> str:
        parts = []
        for node in self.nodes.values():
            try:
                parts.append(f"--- {node.name}\n{node.log.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(parts)


def start_node(name: str, args: list[str], log: Path, env: dict[str, str]) -> Node:
    """``ray start … --block`` with free ports for everything a second node on the same host would share."""
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    port_args = [a for p in ports for a in (p, str(free_port()))]
    handle = open(log, "ab")  # noqa: SIM115 - lives as long as the node
    proc = subprocess.Popen(
        [str(RAY_BIN), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--object-store-memory", str(96 * 1024 * 1024), "--disable-usage-stats",
         *port_args, "--block"],
        cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Node(name, proc, log)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A two-node Ray cluster of its own (private temp folder, free ports); both nodes killed at the end."""
    temp_dir = Path(tempfile.mkdtemp(prefix=f"rc{os.getpid()}-", dir="/tmp"))  # short: Ray's socket paths
    gcs_port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FAST_HEALTH)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    # no token auth for this short-lived test cluster: ~/.ray/auth_token is shared with (and regenerated by) other
    # Rays on this machine, so a token read from it may not match; compose sets RAY_AUTH_MODE=token explicitly
    auth = {"RAY_AUTH_MODE": "disabled"}
    env.update(auth)
    c = Cluster(address=f"127.0.0.1:{gcs_port}", temp_dir=temp_dir, auth=auth)
    try:
        c.nodes["head"] = start_node(
            "head", ["--head", "--port", str(gcs_port), "--temp-dir", str(temp_dir), "--include-dashboard=false",
                     "--ray-client-server-port", str(free_port()), "--resources", json.dumps({"head_node": 1})],
            tmp_path / "ray-head.log", env)
        time.sleep(3)
        c.nodes["worker"] = start_node(
            "worker", ["--address", c.address, "--resources", json.dumps({"worker_node": 1})],
            tmp_path / "ray-worker.log", env)
        yield c
    finally:
        for node in reversed(list(c.nodes.values())):
            kill_tree(node.proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_ids(address: str) -> dict[str, str]:
    """{"head": id, "worker": id} of the alive nodes, by their custom resource."""
    out = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        if "head_node" in res:
            out["head"] = node["NodeID"]
        if "worker_node" in res:
            out["worker"] = node["NodeID"]
    return out


# --- the database ------------------------------------------------------------------------------------------
COUNTED = ("jobs", "trials", "rules", "job_rules", "job_events", "rule_terms")


def table_rows(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """The stable columns of every row of the counted tables (not updated_at/progress)."""
    from sqlalchemy import create_engine, text

    queries = {
        "jobs": "SELECT id, status, attempts FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')",
        "trials": 'SELECT id, job_id, "index", status, heldout_accuracy FROM trials',
        "rules": "SELECT id, hash, expression FROM rules",
        "job_rules": "SELECT job_id, rule_id FROM job_rules",
        "job_events": "SELECT id, kind, message FROM job_events",
        "rule_terms": "SELECT * FROM rule_terms",
    }
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {name: {tuple(r) for r in conn.execute(text(q))} for name, q in queries.items()}
    finally:
        engine.dispose()


def spec(name: str, *, episodes: int, sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """A synthetic discovery spec whose trials (or the job) need 2 CPUs: one per node."""
    out: dict[str, Any] = {
        "name": name,
        "network": {"widths": [784, 16, 10], "feedback": "fa"},
        "task": {"dataset": "synthetic", "shots": 5, "queries": 5},
        "meta": {"episodes": episodes, "eval_episodes": 10, "checkpoint_every": 10},
        "resources": {"device": "cpu", "num_cpus": 2},
    }
    if sweep:
        out["sweep"] = sweep
    return out


@ray.remote(num_cpus=2, resources={"head_node": 1})
class Placeholder:
    """Keeps the head's CPUs busy so that the next job lands on the worker node."""

    def ready(self) -> bool:
        return True


def test_two_node_cluster_sweep_and_node_loss(
    cluster: Cluster, pg_schema_factory: Callable[[], str], tmp_path: Path,
    live_server_factory: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in cluster.auth.items():
        monkeypatch.setenv(key, value)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        ids = wait_for(lambda: node_ids(cluster.address), lambda d: len(d) == 2, 90, "two alive Ray nodes",
                       cluster.logs)
        run_scenario(cluster, ids, pg_schema_factory(), tmp_path, live_server_factory)
    finally:
        ray.shutdown()


def run_scenario(cluster: Cluster, ids: dict[str, str], db_url: str, tmp_path: Path,
                 live_server_factory: Callable[..., LiveServer]) -> None:
    shared = tmp_path / "shared-checkpoints"  # one folder every node reads (here: the same machine)
    server = live_server_factory(tmp_path / "data", env={
        "RAY_ADDRESS": cluster.address, "PLASTICITY_DATABASE_URL": db_url, "PLASTICITY_CHECKPOINT_DIR": str(shared),
        "PLASTICITY_MAX_ATTEMPTS": "3", "PLASTICITY_POLL_SECONDS": "0.3", **FAST_HEALTH, **cluster.auth})

    def logs() -> str:
        return server.log() + cluster.logs()

    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        health = http.get("/api/health").json()
        assert health["ray"]["state"] == "connected", health

        def job(job_id: int) -> dict[str, Any]:
            return http.get(f"/api/jobs/{job_id}", params={"events": True}).json()

        # 1. a sweep whose two trials run on the two nodes
        # long enough (a few seconds per trial) that the first trial is still running when the second is placed,
        # also on a loaded machine where starting a trial's actor takes seconds
        sweep_id = http.post("/api/jobs", json=spec("sweep", episodes=600, sweep={"seeds": [0, 1]}),
                             headers=auth).json()["id"]
        swept = wait_for(lambda: job(sweep_id), lambda j: j["status"] in FINAL, 180, "the sweep", logs)
        assert swept["status"] == "succeeded" and swept["trials"] == 2, swept
        trial_nodes = trial_node_ids(db_url, sweep_id)
        assert trial_nodes == {ids["head"], ids["worker"]}, (trial_nodes, ids)

        # 2. a job on the worker node (the head busy meanwhile), then the worker node dies
        placeholder = Placeholder.remote()
        ray.get(placeholder.ready.remote(), timeout=60)
        job_id = http.post("/api/jobs", json=spec("node-loss", episodes=200), headers=auth).json()["id"]
        running = wait_for(lambda: job(job_id),
                           lambda j: (j["progress"] or {}).get("episode", 0) >= 25
                           and any(e["kind"] == "worker" for e in j["events"]), 180,
                           "the job to pass its episode-20 checkpoint", logs)
        first = next(e["data"] for e in running["events"] if e["kind"] == "worker")
        assert first["node_id"] == ids["worker"], (first, ids)
        before = table_rows(db_url)
        ray.kill(placeholder)  # the head has room again
        kill_tree(cluster.nodes["worker"].proc)
        t_kill = time.monotonic()
        final = wait_for(lambda: job(job_id), lambda j: j["status"] in FINAL, 240, "the job after the node loss",
                         logs)
        t_end = time.monotonic()

    assert final["status"] == "succeeded", (final["error"], [(e["kind"], e["message"]) for e in final["events"]])
    assert final["attempts"] >= 2 and final["resumed_from_episode"] and final["resumed_from_episode"] >= 20, final
    workers = [e["data"] for e in final["events"] if e["kind"] == "worker"]
    assert workers[-1]["node_id"] == ids["head"], workers  # resumed on the other node
    assert any(e["kind"] == "retrying" for e in final["events"])
    assert (shared / f"job-{job_id}").is_dir()

    # 3. nothing lost: every row counted before the kill is still there, unchanged
    after = table_rows(db_url)
    for table in COUNTED:
        missing = before[table] - after[table]
        assert not missing, (table, missing)
        assert len(after[table]) >= len(before[table])
    assert len(after["jobs"]) == len(before["jobs"]) + 1  # the recovered job finished, nothing else changed
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster.json").write_text(json.dumps({
        "rows_before": {t: len(before[t]) for t in COUNTED}, "rows_after": {t: len(after[t]) for t in COUNTED},
        "resumed_from_episode": final["resumed_from_episode"], "attempts": final["attempts"],
        "kill_to_success_s": round(t_end - t_kill, 1), "run": uuid.uuid4().hex[:6],
    }, indent=2))


def trial_node_ids(db_url: str, job_id: int) -> set[str]:
    """The Ray nodes that ran a sweep's trials (``node_id`` in each trial's metrics)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT metrics FROM trials WHERE job_id = :j"), {"j": job_id}).all()
    finally:
        engine.dispose()
    return {(r[0] if isinstance(r[0], dict) else json.loads(r[0])).get("node_id") for r in rows}
