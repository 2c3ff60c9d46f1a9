"""Recordings and inference jobs in the service (issue #28, docs/inference.md): ``/api/recordings`` (NWB and npz,
both layouts), bad recordings refused with a 4xx naming the reason and nothing stored, ``/api/inferences`` and the
inference goal, the job run by the real actor (in-process dispatcher) storing an inferred rule with its provenance
and trajectories on its page, the migration, and nwbinspector on the simulator's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from discovery.inference import simulate, validate, write_npz, write_nwb
from discovery.inference.errors import simulate_layered, write_layered_npz
from service.runs.dispatcher import Dispatcher
from tests.helpers import uploads
from tests.helpers.uploads import npz, post_file, stored_names
from tests.test_contract import InProcessWorkers
from workers.actors import JobActor
from workers.contract import InferenceTask, JobState

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def upload(client: TestClient, auth: dict[str, str], data: bytes, filename: str = "rec.npz",
           name: str | None = None) -> Any:
    return post_file(client, auth, "/api/recordings", data, filename, name)


@pytest.fixture(scope="module")
def tiny_sim() -> Any:
    return simulate(n_pre=8, n_post=2, n_steps=150, n_trials=4, w0_scale=0.05, noise=0.05, seed=3)


class InferenceWorkers(InProcessWorkers):
    """The in-process stand-in of the contract tests, also running inference jobs through the real actor."""

    def submit_inference(self, job_id: int | str, spec: Any, *, max_retries: int = 0) -> object:
        actor = JobActor(str(job_id), "inference", InferenceTask(spec=spec))
        outcome = actor.run()
        self.states[int(job_id)] = JobState(status=outcome.status, result=outcome.result, error=outcome.error)
        return int(job_id)


def run_jobs(app: Any, settings: Any) -> None:
    d = Dispatcher(settings, app.state.sessions, InferenceWorkers(None))
    d.tick()
    d.tick()


def _bad_cases(tmp_path: Path) -> list[tuple[str, bytes, str, int, str]]:
    from datetime import UTC, datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(0)
    x, y, W = rng.normal(size=(10, 4)), rng.normal(size=(10, 2)), rng.normal(size=(10, 2, 4))
    nan_y = y.copy()
    nan_y[3, 1] = np.nan
    nwb = NWBFile(session_description="d", identifier="i", session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    nwb.add_acquisition(TimeSeries(name="pre", data=x, unit="a.u.", rate=1.0))
    nopost = tmp_path / "nopost.nwb"
    with NWBHDF5IO(str(nopost), "w") as out:
        out.write(nwb)
    layered = simulate_layered(n_steps=5, n_trials=1, noise=0.0, widths=(3, 3, 2))
    with np.load(write_layered_npz(layered, tmp_path / "layered.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    del arrays["e_1"]
    return [
        ("empty", b"", "r.npz", 422, "empty"),
        ("not a recording", b"hello world", "r.npz", 422, "neither NWB"),
        ("fake hdf5", b"\x89HDF\r\n\x1a\n" + b"0" * 64, "r.nwb", 422, "cannot be read"),
        ("missing post", npz(pre=x, weights=W), "r.npz", 422, "missing series 'post'"),
        ("nan", npz(pre=x, post=nan_y), "r.npz", 422, "non-finite"),
        ("length", npz(pre=x, post=y[:9]), "r.npz", 422, "length mismatch"),
        ("weights shape", npz(pre=x, post=y, weights=W.transpose(0, 2, 1)), "r.npz", 422, "(T, n_post, n_pre)"),
        ("ndim", npz(pre=x[:, :, None], post=y), "r.npz", 422, "must have 2 dimensions"),
        ("irregular timestamps", npz(pre=x, post=y, timestamps=np.r_[np.arange(9.0), 20.0]), "r.npz", 422,
         "regular step"),
        ("short trial", npz(pre=x, post=y, trial_starts=np.array([0, 8])), "r.npz", 422, "at least 3"),
        ("nonlinearity", npz(pre=x, post=y, nonlinearity=np.array("tanh")), "r.npz", 422, "unsupported nonlinearity"),
        ("strings", npz(pre=np.array([["a"] * 4] * 10), post=y), "r.npz", 422, "real numbers"),
        ("bad dt", npz(pre=x, post=y, dt=np.array(-1.0)), "r.npz", 422, "time step"),
        ("nwb without post", nopost.read_bytes(), "r.nwb", 422, "missing series 'post'"),
        ("layered without an error", npz(**arrays), "r.npz", 422, "missing series 'e_1'"),
        ("too large", b"PK" + b"0" * 200_000, "r.npz", 413, "PLASTICITY_MAX_UPLOAD_BYTES"),
    ]


@pytest.fixture
def small_limit_client(settings: Any) -> Any:
    with uploads.client_with_upload_limit(settings, 200_000) as client_and_settings:
        yield client_and_settings


def test_bad_recordings_get_a_4xx_with_the_reason_and_store_nothing(small_limit_client: Any, auth: dict[str, str],
                                                                    tmp_path: Path) -> None:
    client, settings = small_limit_client
    rng = np.random.default_rng(1)
    good = upload(client, auth, npz(pre=rng.normal(size=(20, 3)), post=rng.normal(size=(20, 2))), name="good")
    assert good.status_code == 201, good.text
    cases = _bad_cases(tmp_path)
    cases.append(("duplicate name", npz(pre=rng.normal(size=(20, 3)), post=rng.normal(size=(20, 2))), "x.npz", 409,
                  "a recording named 'good' exists"))
    folder = settings.datasets_dir / "recordings"
    uploads.assert_refused_and_nothing_stored(client, auth, "/api/recordings", cases, folder)
    r = client.post("/api/recordings", files={"file": ("a.npz", b"PK")})
    assert r.status_code == 401


def test_an_insert_race_is_a_409_and_leaves_no_new_file(client: TestClient, auth: dict[str, str], settings: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from service.db.repositories import recordings as repo

    rng = np.random.default_rng(2)
    first, second = (npz(pre=rng.normal(size=(20, 3)), post=rng.normal(size=(20, 2))) for _ in range(2))
    uploads.check_insert_race(client, auth, "/api/recordings", repo, monkeypatch, first, second,
                              settings.datasets_dir / "recordings", "recording")


@SQLITE_ONLY
def test_upload_infer_and_the_rule_page(client: TestClient, auth: dict[str, str], app: Any, settings: Any,
                                        tiny_sim: Any, tmp_path: Path) -> None:
    path = write_nwb(tiny_sim.recording, tmp_path / "oja.nwb")
    r = upload(client, auth, path.read_bytes(), "oja.nwb")
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["format"] == "nwb" and rec["kind"] == "layer" and rec["widths"] == [8, 2] and rec["weights_observed"]
    assert r.headers["Location"] == f"/api/recordings/{rec['id']}"
    again = upload(client, auth, write_npz(tiny_sim.recording, tmp_path / "same.npz").read_bytes(), "same.npz")
    assert again.status_code == 409 and "already uploaded as recording" in again.text   # same arrays as npz
    assert client.get(f"/api/recordings/{rec['id']}").json()["sha256"] == rec["sha256"]

    for body, field in [({}, "recording_id"), ({"recording_id": 1, "goal": "x"}, "recording_id"),
                        ({"recording_id": "1"}, "recording_id"), ({"recording_id": 999}, "recording_id"),
                        ({"goal": "find a rule please"}, "goal"), ({"recording_id": 1, "max_terms": 0}, "max_terms"),
                        ({"recording_id": 1, "colour": "red"}, "colour")]:
        bad = client.post("/api/inferences", json=body, headers=auth)
        assert bad.status_code == 422, (body, bad.text)
        assert field in bad.text, (body, bad.text)
    assert client.get("/api/inferences").json() == []

    r = client.post("/api/inferences", json={"goal": f"infer the plasticity rule from recording {rec['id']}",
                                             "n_bootstrap": 30}, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    run_jobs(app, settings)
    done = client.get(f"/api/inferences/{job_id}").json()
    assert done["status"] == "succeeded", done
    assert set(done["theta"]) == set(tiny_sim.theta)
    assert done["heldout_explained_variance"] > 0.9
    assert all(c["ci_low"] <= done["theta"][k] <= c["ci_high"] for k, c in done["coefficients"].items())
    rule = client.get(f"/api/rules/{done['rule_id']}").json()
    assert rule["origin"] == "inferred"
    assert rule["provenance"]["recording"] == {"id": rec["id"], "name": "oja", "sha256": rec["sha256"]}
    assert client.get("/api/rules", params={"origin": "inferred"}).headers["X-Total-Count"] == str(
        len(done["rule_ids"]))
    page = client.get(f"/rules/{done['rule_id']}").text
    assert 'id="trajectory-plot"' in page and "<svg" in page and rec["sha256"] in page
    assert [j["id"] for j in client.get("/api/inferences").json()] == [job_id]
    assert client.get(f"/api/jobs/{job_id}").json()["spec"]["kind"] == "inference"
    for url in (f"/jobs/{job_id}", "/jobs", "/rules", "/?suite=discovery"):
        assert client.get(url).status_code == 200, url
    board = client.get("/api/leaderboard", params={"suite": "discovery"}).json()
    assert done["rule_id"] not in [e["rule_id"] for e in board["entries"]]   # an EV is not a task accuracy
    assert rule["scores"] == []

    # the same goal through POST /api/jobs queues an inference too
    r = client.post("/api/jobs", json={"goal": f"infer the rule behind recording {rec['id']}"}, headers=auth)
    assert r.status_code == 201 and r.json()["spec"]["recording"]["sha256"] == rec["sha256"], r.text
    # a recording read by a queued job cannot be deleted; then it can, and its file goes
    assert client.delete(f"/api/recordings/{rec['id']}", headers=auth).status_code == 409
    client.post(f"/api/jobs/{r.json()['id']}/cancel", headers=auth)
    assert client.delete(f"/api/recordings/{rec['id']}", headers=auth).status_code == 204
    assert stored_names(settings.datasets_dir / "recordings") == []


@SQLITE_ONLY
def test_activity_only_and_layered_recordings_are_inferred(client: TestClient, auth: dict[str, str], app: Any,
                                                           settings: Any, tmp_path: Path) -> None:
    sim = simulate(n_pre=6, n_post=2, n_steps=120, n_trials=4, w0_scale=0.05, noise=0.02, seed=5).recording
    act = validate(sim.pre, sim.post, None, trial_starts=sim.trial_starts)
    layered = simulate_layered(widths=(6, 5, 4, 3), n_steps=150, n_trials=4, noise=0.02, seed=1)
    ids = []
    for name, data in [("act", write_npz(act, tmp_path / "a.npz").read_bytes()),
                       ("deep", write_layered_npz(layered, tmp_path / "l.npz").read_bytes())]:
        r = upload(client, auth, data, f"{name}.npz")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert client.get(f"/api/recordings/{ids[0]}").json()["weights_observed"] is False
    assert client.get(f"/api/recordings/{ids[1]}").json()["kind"] == "layered"
    jobs = [client.post("/api/inferences", json={"recording_id": i, "n_bootstrap": 3, "max_terms": 3},
                        headers=auth).json()["id"] for i in ids]
    run_jobs(app, settings)
    act_out, deep_out = (client.get(f"/api/inferences/{j}").json() for j in jobs)
    assert act_out["status"] == "succeeded", act_out
    assert act_out["heldout_explained_variance"] is not None
    assert deep_out["status"] == "succeeded", deep_out
    assert set(deep_out["theta"]) == {"F0", "F2", "F9"}
    assert deep_out["theta"]["F0"] > 0 > deep_out["theta"]["F2"] and deep_out["theta"]["F9"] > 0
    assert client.get(f"/api/rules/{deep_out['rule_id']}").json()["family"] == "feedforward"


def test_migration_0007_up_and_down(db_url: str, request: pytest.FixtureRequest) -> None:
    uploads.check_migration_adds_table(db_url, request, "0006_read_fields", "0007_recordings", "recordings")


@pytest.mark.parametrize("layered", [False, True])
def test_simulated_files_pass_nwbinspector(tmp_path: Path, layered: bool) -> None:
    from typer.testing import CliRunner

    from service.cli.main import app

    out = tmp_path / "sim.nwb"
    args = ["simulate", str(out), "--trials", "2", "--steps", "120", "--subsample-pre", "50"]
    args = ["simulate", str(out), "--trials", "2", "--steps", "60", "--layered"] if layered else args
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from nwbinspector import Importance, inspect_nwbfile

    messages = list(inspect_nwbfile(nwbfile_path=str(out)))
    bad = [m for m in messages if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION,
                                                   Importance.ERROR, Importance.PYNWB_VALIDATION)]
    assert not bad, [(m.check_function_name, m.message) for m in bad]
    assert all(m.importance == Importance.BEST_PRACTICE_SUGGESTION for m in messages)


def test_cli_simulate_refuses_bad_rules_with_a_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli.main import app

    for rule, text in [("hebb", "term=number"), ("nope=1", "unknown unsupervised term"), ("hebb=nan", "term=number")]:
        result = CliRunner().invoke(app, ["simulate", str(tmp_path / "x.npz"), "--rule", rule])
        assert result.exit_code == 2 and text in result.output, result.output
        assert "Traceback" not in result.output


@SQLITE_ONLY
def test_client_and_cli_verbs(client: TestClient, app: Any, settings: Any, tiny_sim: Any, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from service.cli.main import app as cli
    from service.client import http
    from service.client import inference as calls
    from tests.conftest import TEST_TOKEN

    transport = client._transport

    class InProcess(http.Client):  # type: ignore[misc, valid-type]
        def __init__(self, url: str | None = None, token: str | None = None, **kw: Any) -> None:
            super().__init__("http://testserver", token, transport=transport)

    c = InProcess(token=TEST_TOKEN)
    rec = calls.upload_recording(c, write_npz(tiny_sim.recording, tmp_path / "tiny.npz"), name="tiny")
    assert [r.id for r in calls.recordings(c)] == [rec.id]
    with pytest.raises(http.Conflict, match="already uploaded"):
        calls.upload_recording(c, write_nwb(tiny_sim.recording, tmp_path / "tiny.nwb"))
    queued = calls.infer(c, rec.id, n_bootstrap=10)
    assert queued.status == "queued" and queued.recording["sha256"] == rec.sha256
    run_jobs(app, settings)
    assert calls.wait_inference(c, queued.id, timeout=5).status == "succeeded"

    monkeypatch.setattr(http, "Client", InProcess)
    env = {"PLASTICITY_API_TOKENS": TEST_TOKEN, "COLUMNS": "200"}
    listed = CliRunner().invoke(cli, ["recordings", "list"], env=env)
    assert listed.exit_code == 0 and "tiny" in listed.output, listed.output
    shown = CliRunner().invoke(cli, ["infer", str(rec.id), "--bootstrap", "5"], env=env)
    assert shown.exit_code == 0 and "queued" in shown.output, shown.output
    missing = CliRunner().invoke(cli, ["infer", "999"], env=env)
    assert missing.exit_code == 2 and "no recording 999" in missing.output and "Traceback" not in missing.output
