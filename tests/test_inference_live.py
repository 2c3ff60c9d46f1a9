"""The NWB round trip of issue #28 on a live server with real Ray (docs/inference.md): ``plasticity simulate`` →
upload → ``POST /api/inferences`` → a stored rule with ``origin = "inferred"``; and a recording written directly
with pynwb (timestamps instead of a rate, the series in a processing module, not the simulator's writer) read and
inferred."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from discovery.unsupervised.terms import OJA_DECAY, OJA_HEBB
from tests.conftest import REPO_ROOT, LiveServer, wait_final

pytestmark = pytest.mark.slow


def handwritten_oja_nwb(path: Path, *, seed: int = 11) -> dict[str, float]:
    """A linear layer 6 → 2 learning under Oja's rule, simulated here in numpy and written with pynwb: the series in
    a processing module, with timestamps (dt = 0.01 s), and a trials table. Returns the true θ per step."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(seed)
    eta, m, n, steps, trials = 0.01, 6, 2, 150, 4
    scales = np.array([2.0, 1.6, 0.5, 0.5, 0.5, 0.5])
    xs, ys, ws = [], [], []
    for _ in range(trials):
        W = rng.normal(scale=0.05, size=(n, m))
        for _ in range(steps):
            x = rng.normal(size=m) * scales
            y = W @ x
            xs.append(x), ys.append(y), ws.append(W.copy())
            W = W + eta * (np.outer(y, x) - np.outer(y, y @ W))
    X, Y, Wt = np.array(xs), np.array(ys), np.array(ws)
    X, Y = X + 0.02 * X.std() * rng.normal(size=X.shape), Y + 0.02 * Y.std() * rng.normal(size=Y.shape)
    Wt = Wt + 0.02 * Wt.std() * rng.normal(size=Wt.shape)
    t = np.arange(len(X)) * 0.01
    nwb = NWBFile(session_description="hand-written Oja recording", identifier="handwritten-oja",
                  session_start_time=dt.datetime(2025, 5, 1, tzinfo=dt.timezone.utc))
    module = nwb.create_processing_module(name="plasticity", description="a layer's activity and weights")
    module.add(TimeSeries(name="pre", data=X, unit="a.u.", timestamps=t))
    module.add(TimeSeries(name="post", data=Y, unit="a.u.", timestamps=t, comments="nonlinearity=linear"))
    module.add(TimeSeries(name="weights", data=Wt, unit="a.u.", timestamps=t))
    for k in range(trials):
        nwb.add_trial(start_time=k * steps * 0.01, stop_time=((k + 1) * steps - 1) * 0.01)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return {OJA_HEBB: eta, OJA_DECAY: -eta}


def _infer(http: httpx.Client, auth: dict[str, str], path: Path, server: LiveServer) -> tuple[dict, dict, dict]:
    r = http.post("/api/recordings", files={"file": (path.name, path.read_bytes())}, headers=auth)
    assert r.status_code == 201, r.text
    rec = r.json()
    r = http.post("/api/inferences", json={"goal": f"infer the plasticity rule from recording {rec['id']}",
                                           "n_bootstrap": 30}, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_final(http, f"/api/inferences/{r.json()['id']}", 300, server)
    assert job["status"] == "succeeded", (job, server.log())
    rule = http.get(f"/api/rules/{job['rule_id']}").json()
    return rec, job, rule


def test_simulate_upload_infer_on_a_live_server(live_server_factory: Callable[..., LiveServer],
                                                tmp_path: Path) -> None:
    simulated = tmp_path / "oja.nwb"
    proc = subprocess.run([sys.executable, "-m", "service.cli", "simulate", str(simulated), "--pre", "8", "--post",
                           "2", "--steps", "150", "--trials", "4", "--noise", "0.05", "--seed", "3"],
                          check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    handwritten = tmp_path / "handwritten.nwb"
    truth = handwritten_oja_nwb(handwritten)

    server = live_server_factory()
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        rec, job, rule = _infer(http, auth, simulated, server)
        assert set(job["theta"]) == {OJA_HEBB, OJA_DECAY}, job
        assert job["theta"][OJA_HEBB] > 0 > job["theta"][OJA_DECAY]
        assert rule["origin"] == "inferred"
        assert rule["provenance"]["recording"] == {"id": rec["id"], "name": "oja", "sha256": rec["sha256"]}
        assert job["heldout_explained_variance"] > 0.8
        assert 'id="trajectory-plot"' in http.get(f"/rules/{job['rule_id']}").text

        rec2, job2, rule2 = _infer(http, auth, handwritten, server)
        assert rec2["dt"] == pytest.approx(0.01) and rec2["n_trials"] == 4 and rec2["widths"] == [6, 2]
        assert set(job2["theta"]) == {OJA_HEBB, OJA_DECAY}, job2
        for term, value in truth.items():
            assert abs(job2["theta"][term] - value) / abs(value) < 0.2, job2["theta"]
        assert rule2["origin"] == "inferred" and rule2["provenance"]["recording"]["sha256"] == rec2["sha256"]
        listed = http.get("/api/inferences").json()
        assert {j["id"] for j in listed} == {job["id"], job2["id"]}
