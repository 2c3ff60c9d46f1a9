"""Issue 13: rule export, the Python client (service.client.http) and the CLI that talks to a server.

1. A stored rule exports in every format (``GET /api/rules/{id}/export``); the torch, numpy and sympy exports run in a
   fresh interpreter (``python -I``, the project's packages blocked from import) and give the engine's ΔW
   (``rules.compiler.compile_expression``) to 1e-6 on random inputs, the torch ``PlasticityRule`` module included;
   a recurrent rule's export matches ``rules.recurrent.evaluate``.
2. The client drives a real server (uvicorn subprocess, real local Ray): a tiny goal job, waited for with a
   progress bar, its rule read, exported and benchmarked (tiny), the leaderboard read; errors are typed and carry
   the server's reason.
3. The CLI commands run against the same server; bad input prints the server's reason in one line, exit code 2.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import TEST_TOKEN, LiveServer

FEEDFORWARD = ("-0.012*e*x.T + 0.065*e*e_pre.T + 0.008*(y*x.T - y*(y.T*W)) + 0.003*e*(one.T*y)*x.T "
               "- 0.002*W + 0.001*(W*x)*(W.T*e).T")
RECURRENT = "0.01*dW1 + 0.25*dW3 + 0.1*dW4 + 0.001*oja - 0.01*decay"
GOAL = ("find a plasticity rule for depth-2 online learning under feedback alignment with oja on synthetic data "
        "for 3 episodes, tiny")
SUITE = "fa5-online"
PYTHON_FORMATS = ("torch", "numpy", "jax", "sympy")


# --- in-process app (export formats) ---------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[Any]:
    """The service on a fresh SQLite file, dispatcher off, token ``test-token``."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'api.db'}",
                        api_tokens=(TEST_TOKEN,), dispatcher_enabled=False, poll_seconds=0.05)
    application = create_app(settings, dispatcher=False)
    with TestClient(application, raise_server_exceptions=False) as http:
        yield http
    application.state.engine.dispose()


def store(api: Any, name: str, expression: str) -> dict[str, Any]:
    r = api.post("/api/rules", json={"name": name, "expression": expression},
                 headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert r.status_code == 201, r.text
    return r.json()


def test_a_stored_rule_exports_in_every_format(api: Any) -> None:
    rule = store(api, "three-factor", FEEDFORWARD)
    for fmt in (*PYTHON_FORMATS, "latex", "json"):
        r = api.get(f"/api/rules/{rule['id']}/export", params={"format": fmt})
        assert r.status_code == 200, (fmt, r.text)
        assert "attachment; filename=" in r.headers["content-disposition"]
        assert rule["hash"] in r.text, fmt
        if fmt in PYTHON_FORMATS:
            assert r.headers["content-type"].startswith("text/x-python")
            tree = ast.parse(r.text)
            doc = ast.get_docstring(tree) or ""
            assert "Column-vector convention" in doc and "e*x.T is the outer product" in doc
            assert f"rule: {rule['id']}" in doc and "origin: user" in doc
            assert any(isinstance(n, ast.FunctionDef) and n.name == "delta_w" for n in tree.body)
            imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert imported <= {"numpy", "torch", "jax", "sympy"}, (fmt, imported)
        if fmt == "torch":
            assert "class PlasticityRule(torch.nn.Module)" in r.text
            assert "(y @ (y.transpose(-1, -2) @ W))" in r.text  # Oja vector-first: y (yᵀW)
    data = json.loads(api.get(f"/api/rules/{rule['id']}/export", params={"format": "json"}).text)
    assert data["family"] == "feedforward" and data["coefficients"] == rule["coefficients"]
    assert data["provenance"]["rule_id"] == rule["id"]
    latex = api.get(f"/api/rules/{rule['id']}/export", params={"format": "latex"}).text
    assert "\\Delta W = " + rule["latex"] in latex

    r = api.get(f"/api/rules/{rule['id']}/export", params={"format": "matlab"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"]
    assert api.get("/api/rules/4242/export").json()["detail"] == "rule 4242 does not exist"
    assert api.get(f"/api/rules/{rule['id']}").status_code == 200  # the export route shadows nothing
    page = api.get(f"/rules/{rule['id']}").text
    assert f'action="/api/rules/{rule["id"]}/export"' in page


RUNNER = r'''
"""Run exported rules with the plasticity project blocked from import; write ΔW to out.npz."""
import importlib.abc, importlib.util, sys
BLOCKED = {"rules", "discovery", "service", "workers", "migrations", "tests"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the export must not import the project")
        return None

sys.meta_path.insert(0, Block())
import numpy as np
import torch
torch.set_default_dtype(torch.float64)

def load(name):
    spec = importlib.util.spec_from_file_location(name, f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

data = dict(np.load("inputs.npz"))
out = {}
ff = {k: data["ff_" + k] for k in ("x", "y", "e", "e_pre", "W")}
out["numpy"] = load("ff_numpy").delta_w(**ff)
t = load("ff_torch")
out["torch"] = t.delta_w(**{k: torch.from_numpy(v) for k, v in ff.items()}).numpy()
small = {k: v[:2, :3, :2] if k == "W" else v[:2, :3] if k in ("y", "e") else v[:2, :2] for k, v in ff.items()}
out["sympy"] = np.array([np.array(M.tolist(), dtype=float)
                         for M in load("ff_sympy").delta_w(**{k: v.tolist() for k, v in small.items()})])
# the nn.Module: two nn.Linear layers updated online from one sample
layers = [torch.nn.Linear(int(data["widths"][i]), int(data["widths"][i + 1]), bias=False) for i in range(2)]
for i, layer in enumerate(layers):
    layer.weight.data.copy_(torch.from_numpy(data[f"net_W{i}"]))
acts = [torch.from_numpy(data[f"net_y{i}"]) for i in range(3)]
errs = [torch.from_numpy(data[f"net_e{i}"]) for i in range(3)]
t.PlasticityRule(layers)(acts, errs)
for i, layer in enumerate(layers):
    out[f"module_W{i}"] = layer.weight.detach().numpy()
rec = {k: data["rec_" + k] for k in ("r", "delta", "G", "W")}
out["rec_numpy"] = load("rec_numpy").delta_w(**rec)
out["rec_torch"] = load("rec_torch").delta_w(**{k: torch.from_numpy(v) for k, v in rec.items()}).numpy()
assert not BLOCKED & {m.split(".")[0] for m in sys.modules}
np.savez("out.npz", **out)
print("ok")
'''


def engine_delta(expression: str, env: dict[str, np.ndarray]) -> np.ndarray:
    """ΔW from the engine's compiled rule (θ = 1), float64."""
    from rules.compiler import compile_expression
    from rules.rule import Rule

    compiled = compile_expression(Rule.parse(expression).expression)
    tensors = {k: torch.from_numpy(v) for k, v in env.items()}
    return compiled.delta(torch.ones(1, dtype=torch.float64), tensors).numpy()


def recurrent_reference(expression: str, rec: dict[str, np.ndarray]) -> np.ndarray:
    """ΔW per sample by ``rules.recurrent.evaluate`` (G = diag, u from its fixed-point equation)."""
    from rules.recurrent import parse_recurrent
    from rules.recurrent_compiler import evaluate

    expr = parse_recurrent(expression).expression
    out = []
    for b in range(rec["r"].shape[0]):
        G = np.diag(rec["G"][b])
        u = np.linalg.solve(np.eye(G.shape[0]) - rec["W"][b].T @ G, rec["delta"][b])
        values = {"W": rec["W"][b], "G": G, "r": rec["r"][b][:, None], "delta": rec["delta"][b][:, None],
                  "u": u[:, None]}
        out.append(evaluate(expr, {k: torch.from_numpy(v) for k, v in values.items()}).numpy())
    return np.stack(out)


def test_exports_run_without_the_project_and_match_the_engine(api: Any, tmp_path: Path) -> None:
    ff_rule, rec_rule = store(api, "ff", FEEDFORWARD), store(api, "rec", RECURRENT)
    work = tmp_path / "fresh"
    work.mkdir()
    for prefix, rule, formats in (("ff", ff_rule, ("numpy", "torch", "sympy")), ("rec", rec_rule, ("numpy", "torch"))):
        for fmt in formats:
            r = api.get(f"/api/rules/{rule['id']}/export", params={"format": fmt})
            assert r.status_code == 200, r.text
            (work / f"{prefix}_{fmt}.py").write_text(r.text)
    assert "def delta_w(r, delta, G, W, u=None)" in (work / "rec_numpy.py").read_text()

    g = np.random.default_rng(13)
    B, n, m, N = 6, 7, 5, 6
    widths = [5, 4, 3]
    inputs = {
        "ff_x": g.standard_normal((B, m)), "ff_y": g.standard_normal((B, n)), "ff_e": g.standard_normal((B, n)),
        "ff_e_pre": g.standard_normal((B, m)), "ff_W": g.standard_normal((B, n, m)),
        "widths": np.array(widths),
        "rec_r": g.standard_normal((B, N)), "rec_delta": g.standard_normal((B, N)),
        "rec_G": g.uniform(0.1, 1.0, (B, N)), "rec_W": 0.2 * g.standard_normal((B, N, N)),
    }
    for i in range(3):
        inputs[f"net_y{i}"] = g.standard_normal(widths[i])
        inputs[f"net_e{i}"] = g.standard_normal(widths[i])
    for i in range(2):
        inputs[f"net_W{i}"] = g.standard_normal((widths[i + 1], widths[i]))
    np.savez(work / "inputs.npz", **inputs)
    (work / "runner.py").write_text(textwrap.dedent(RUNNER))

    done = subprocess.run([sys.executable, "-I", "runner.py"], cwd=work, capture_output=True, text=True, check=False,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
    got = dict(np.load(work / "out.npz"))

    ff = {k: inputs["ff_" + k] for k in ("x", "y", "e", "e_pre", "W")}
    ref = engine_delta(FEEDFORWARD, ff)
    assert np.abs(ref).max() > 1e-2  # a nontrivial ΔW
    np.testing.assert_allclose(got["numpy"], ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["torch"], ref, rtol=1e-6, atol=1e-6)
    small = {k: v[:2, :3, :2] if k == "W" else v[:2, :3] if k in ("y", "e") else v[:2, :2] for k, v in ff.items()}
    np.testing.assert_allclose(got["sympy"], engine_delta(FEEDFORWARD, small), rtol=1e-6, atol=1e-6)
    for i in range(2):  # the module: W_ℓ += ΔW_ℓ(x = y_{ℓ-1}, y = y_ℓ, e = e_ℓ, e_pre = e_{ℓ-1}, W_ℓ)
        env = {"x": inputs[f"net_y{i}"][None], "y": inputs[f"net_y{i + 1}"][None],
               "e": inputs[f"net_e{i + 1}"][None], "e_pre": inputs[f"net_e{i}"][None], "W": inputs[f"net_W{i}"][None]}
        expected = inputs[f"net_W{i}"] + engine_delta(FEEDFORWARD, env)[0]
        np.testing.assert_allclose(got[f"module_W{i}"], expected, rtol=1e-6, atol=1e-6)

    rec_ref = recurrent_reference(RECURRENT, {k: inputs["rec_" + k] for k in ("r", "delta", "G", "W")})
    np.testing.assert_allclose(got["rec_numpy"], rec_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["rec_torch"], rec_ref, rtol=1e-6, atol=1e-6)


# --- a real server -----------------------------------------------------------------------------------------------
def cli(args: list[str], server: LiveServer, **env: str) -> Any:
    """``plasticity ARGS`` in-process (typer's CliRunner) against ``server``."""
    from typer.testing import CliRunner

    from service.cli.main import app

    environment = {"PLASTICITY_SERVER": server.url, "PLASTICITY_API_TOKENS": server.token, "COLUMNS": "200", **env}
    result = CliRunner().invoke(app, args, env=environment)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line_error(result: Any, *needles: str) -> str:
    """Exit code 2 and exactly one non-empty stderr line, holding every needle; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.slow
def test_client_and_cli_against_a_real_server(live_server_factory: Callable[..., LiveServer],
                                              tmp_path: Path) -> None:
    from rich.console import Console

    from service.client import http as api_client
    from service.client.http import Client

    server = live_server_factory()
    c = Client(server.url, server.token, timeout=30)
    assert c.health().status == "ok"

    # typed errors carrying the server's reason
    with pytest.raises(api_client.Unauthorized) as caught:
        Client(server.url, "not-the-token").submit(goal=GOAL)
    assert caught.value.status == 401 and caught.value.reason
    with pytest.raises(api_client.NotFound, match="rule 424242 does not exist"):
        c.rule(424242)
    with pytest.raises(api_client.InvalidRequest) as caught:
        c.submit(goal="make me a sandwich")
    assert caught.value.status == 422 and "sandwich" in caught.value.reason
    with pytest.raises(api_client.ConnectionFailed):
        Client("http://127.0.0.1:9", server.token).health()

    # submit a tiny goal job, wait with a progress bar, read the rule, export it, benchmark it, the leaderboard
    job = c.submit(goal=GOAL)
    assert job.status == "queued" and job.spec["network"]["widths"] == [784, 16, 10]
    shown = io.StringIO()
    job = c.wait(job, progress=True, timeout=240, console=Console(file=shown, width=160))
    assert job.status == "succeeded" and job.progress is not None and job.progress.episode == 3
    assert f"job {job.id}" in shown.getvalue() and "3/3" in shown.getvalue()
    rule = c.rule(job.rule_ids[0])
    assert rule.origin == "discovered" and rule.provenance["job_id"] == job.id
    assert rule.id in [r.id for r in c.rules(origin="discovered", feedback="fa")]
    with pytest.raises(TypeError, match="unknown rule filter"):
        c.rules(colour="red")
    source = c.export(rule.id, "torch")
    assert rule.hash in source and f"job: {job.id}" in source and "network 784-16-10, fa feedback" in source
    with pytest.raises(api_client.InvalidRequest) as caught:
        c.export(rule.id, "matlab")
    assert caught.value.field == "format"
    run = c.benchmark(rule.id, SUITE, tiny=True, timeout=300)
    assert run.status == "succeeded" and {s.origin for s in run.scores} == {"discovered", "baseline"}
    board = c.leaderboard(SUITE)
    assert board.suite == SUITE and rule.name in [e.name for e in board.entries]
    with pytest.raises(api_client.Conflict, match="already succeeded"):
        c.cancel(job)
    with pytest.raises(api_client.Conflict, match="already succeeded"):
        c.cancel_benchmark(run)

    # the CLI against the same server
    result = cli(["jobs", "submit", "--goal", GOAL, "--wait", "--timeout", "240"], server)
    assert result.exit_code == 0, result.output
    assert "3/3" in result.stderr  # the progress bar
    assert "succeeded" in result.stdout and "ΔW = " in result.stdout
    jobs = json.loads(cli(["jobs", "list", "--json"], server).stdout)
    assert len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs)
    second = jobs[0]
    assert str(second["id"]) in cli(["jobs", "show", str(second["id"])], server).stdout
    listed = cli(["rules", "list", "--origin", "discovered"], server)
    assert listed.exit_code == 0 and rule.name in listed.stdout
    shown_rule = json.loads(cli(["rules", "show", str(rule.id), "--json"], server).stdout)
    assert shown_rule["hash"] == rule.hash
    target = tmp_path / "exported" / "rule.py"
    result = cli(["rules", "export", str(rule.id), "--format", "numpy", "--out", str(target)], server)
    assert result.exit_code == 0 and "def delta_w(x, y, e, e_pre, W)" in target.read_text()
    assert cli(["rules", "export", str(rule.id), "-f", "json"], server).stdout.startswith("{")
    assert "BP" in cli(["benchmarks", "show", str(run.id)], server).stdout
    board_out = cli(["leaderboard", "--suite", SUITE], server)
    assert board_out.exit_code == 0 and "leaderboard: " + SUITE in board_out.stdout
    assert json.loads(cli(["leaderboard", "--suite", SUITE, "--json"], server).stdout)["suite"] == SUITE
    queued = json.loads(cli(["benchmarks", "run", "--suite", SUITE, "--rule-id", str(rule.id), "--tiny", "--json"],
                            server).stdout)
    cancelled = cli(["benchmarks", "cancel", str(queued["id"])], server)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout

    # bad input: the server's reason in one line, exit code 2
    one_line_error(cli(["jobs", "submit", "--goal", "make me a sandwich"], server), "422", "sandwich")
    one_line_error(cli(["benchmarks", "run", "--suite", "no-such-suite", "--rule-id", str(rule.id)], server),
                   "422", "unknown suite 'no-such-suite'")
    one_line_error(cli(["benchmarks", "cancel", str(run.id)], server), "409", "already succeeded")
    one_line_error(cli(["rules", "show", "424242"], server), "404", "rule 424242 does not exist")
    one_line_error(cli(["rules", "export", str(rule.id), "--format", "matlab"], server), "422", "format")
    one_line_error(cli(["jobs", "submit", "--goal", GOAL], server, PLASTICITY_API_TOKENS="wrong"), "401")
    # the installed entry point, as a user runs it: same one line, no traceback
    done = subprocess.run([sys.executable, "-m", "service.cli.main", "jobs", "cancel", str(job.id), "--server", server.url,
                           "--token", server.token], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "409" in done.stderr, done.stderr
    c.close()
