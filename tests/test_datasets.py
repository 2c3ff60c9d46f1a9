"""Uploaded data sets (issue #27): ``POST/GET/DELETE /api/datasets``, jobs on ``upload:<id>``, the goal phrase
"on my dataset <name>", bad files refused with a 4xx and nothing stored, the digits upload reproducing the built-in
``digits`` bit for bit, the migration, the page, the client and the CLI verbs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from discovery.spec import DiscoverySpec
from service.db.models import RUNNING, SUCCEEDED, Job
from service.db.session import session_scope
from service.runs.dispatcher import Dispatcher
from service.runs.states import set_status
from tests.conftest import TEST_TOKEN
from tests.helpers import uploads
from tests.helpers.uploads import npz, post_file, stored_names
from tests.test_contract import InProcessWorkers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def small_set(classes: int = 3, per_class: int = 20, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = rng.random((len(y), dim)) + y[:, None]
    return x, y


def digits_npz() -> bytes:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return npz(X=bunch.data, y=bunch.target)


def nwb_bytes(tmp_path: Path, x: np.ndarray | None, y: np.ndarray | None, *, labels_in_trials: bool = False) -> bytes:
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(session_description="upload test", identifier="t",
                  session_start_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    if x is not None:
        nwb.add_acquisition(TimeSeries(name="X", data=x, unit="a.u.", rate=1.0))
    else:
        nwb.add_acquisition(TimeSeries(name="other", data=np.zeros((4, 2)), unit="a.u.", rate=1.0))
    if y is not None and not labels_in_trials:
        nwb.add_acquisition(TimeSeries(name="y", data=y, unit="label", rate=1.0))
    if y is not None and labels_in_trials:
        nwb.add_trial_column(name="label", description="class of the sample")
        for i, label in enumerate(y):
            nwb.add_trial(start_time=float(i), stop_time=float(i) + 0.5, label=int(label))
    path = tmp_path / "upload.nwb"
    with NWBHDF5IO(str(path), "w") as out:
        out.write(nwb)
    return path.read_bytes()


def upload(client: TestClient, auth: dict[str, str], data: bytes, filename: str = "set.npz",
           name: str | None = None) -> Any:
    return post_file(client, auth, "/api/datasets", data, filename, name)


def stored_files(settings: Any) -> list[str]:
    return stored_names(settings.datasets_dir)


def run_jobs(app: Any, settings: Any) -> None:
    from discovery.router import discover

    d = Dispatcher(settings, app.state.sessions, InProcessWorkers(discover))
    d.tick()   # submit: the actor runs the engine
    d.tick()   # poll: the result is recorded


# --- upload, list, page ----------------------------------------------------------------------------------------------
def test_upload_lists_and_shows_the_data_set(client: TestClient, auth: dict[str, str], settings: Any) -> None:
    r = upload(client, auth, digits_npz(), "digits.npz")
    assert r.status_code == 201, r.text
    d = r.json()
    assert r.headers["Location"] == f"/api/datasets/{d['id']}"
    assert (d["name"], d["ref"], d["n"], d["dim"], d["side"], d["n_classes"]) == (
        "digits", f"upload:{d['id']}", 1797, 64, 8, 10)
    assert d["classes"] == list(range(10)) and sum(d["class_counts"]) == 1797 and d["class_counts"][0] == 178
    assert len(d["sha256"]) == 64 and d["owner"] and d["format"] == "npz"
    assert stored_files(settings) == [f"{d['sha256']}.npz"]
    listed = client.get("/api/datasets")
    assert listed.headers["X-Total-Count"] == "1" and listed.json() == [d]
    assert client.get(f"/api/datasets/{d['id']}").json() == d
    assert client.get("/api/datasets/999").status_code == 404
    page = client.get("/datasets")
    assert page.status_code == 200 and "digits" in page.text and "<svg" in page.text
    one = client.get(f"/datasets/{d['id']}")
    assert one.status_code == 200 and d["sha256"] in one.text and one.text.count("data:image/png;base64,") == 30


def test_a_goal_names_the_data_set_and_the_openapi_schema_shows_the_form(client: TestClient,
                                                                       auth: dict[str, str]) -> None:
    d = upload(client, auth, npz(X=np.random.default_rng(0).random((60, 12)), y=np.repeat([3, 5, 9], 20)),
               "mine.npz", name="my-set").json()
    read = client.get("/api/goal", params={"text": "depth-2 fa on my dataset my-set, tiny, 3-way"})
    assert read.status_code == 200, read.text
    spec = read.json()["spec"]
    assert spec["task"]["dataset"] == d["ref"] and spec["network"]["widths"] == [12, 16, 3]
    unknown = client.get("/api/goal", params={"text": "depth-2 fa on my dataset nope"})
    assert unknown.status_code == 422 and "no uploaded data set named 'nope'" in unknown.json()["detail"]["message"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    dataset = schema["TaskSpec"]["properties"]["dataset"]
    assert {"pattern": "^upload:[1-9][0-9]{0,9}$"}.items() <= next(
        s for s in dataset["anyOf"] if "pattern" in s).items()
    assert "DatasetOut" in schema


# --- bad input: a 4xx with the reason, nothing stored ----------------------------------------------------------------
X, Y = small_set()


def _bad_cases(tmp_path: Path) -> list[tuple[str, bytes, str, int, str]]:
    nan = X.copy()
    nan[3, 4] = np.nan
    inf = X.copy()
    inf[0, 0] = np.inf
    return [
        ("not a zip", b"hello, this is not a zip archive", "set.npz", 422, "not a .npz file"),
        ("missing y", npz(X=X), "set.npz", 422, "no array y"),
        ("missing X and y", npz(a=X), "set.npz", 422, "no array X and no array y"),
        ("NaN", npz(X=nan, y=Y), "set.npz", 422, "NaN or infinite"),
        ("Inf", npz(X=inf, y=Y), "set.npz", 422, "NaN or infinite"),
        ("one class", npz(X=X, y=np.zeros(len(Y), dtype=np.int64)), "set.npz", 422, "at least 2 classes"),
        ("too few per class", npz(X=X[:41], y=Y[:41]), "set.npz", 422, "fewer than 2 samples"),
        ("float labels", npz(X=X, y=Y.astype(np.float64)), "set.npz", 422, "y must hold integer class labels"),
        ("string features", npz(X=X.astype(str), y=Y), "set.npz", 422, "X must hold real numbers"),
        ("complex features", npz(X=X.astype(np.complex64), y=Y), "set.npz", 422, "X must hold real numbers"),
        ("length mismatch", npz(X=X, y=Y[:-1]), "set.npz", 422, "60 samples but y has 59 labels"),
        ("X not a matrix", npz(X=X[:, 0], y=Y), "set.npz", 422, "X must be N × D"),
        ("D beyond the largest width", npz(X=np.zeros((6, 5000)), y=np.repeat([0, 1], 3)), "set.npz", 422,
         "more than the largest input width"),
        ("pickled objects", _pickled(), "set.npz", 422, "object (pickled) array"),
        ("unknown format", b"a,b\n1,2\n", "set.csv", 422, "unsupported file"),
        ("empty", b"", "set.npz", 422, "empty"),
        ("NWB that is not HDF5", b"not hdf5 at all", "set.nwb", 422, "not an NWB file"),
        ("NWB without the series X", nwb_bytes(tmp_path, None, Y), "set.nwb", 422, "no series 'X'"),
        ("NWB without labels", nwb_bytes(tmp_path, X, None), "set.nwb", 422, "has no labels"),
        ("oversize", npz(X=np.zeros((2000, 100)), y=np.repeat([0, 1], 1000)), "big.npz", 413,
         "request body too large"),
    ]


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    return buf.getvalue()


@pytest.fixture
def small_limit_client(settings: Any) -> Any:
    with uploads.client_with_upload_limit(settings, 400_000) as client_and_settings:
        yield client_and_settings


def test_bad_files_get_a_4xx_with_the_reason_and_store_nothing(small_limit_client: Any, auth: dict[str, str],
                                                               tmp_path: Path) -> None:
    client, settings = small_limit_client
    good = upload(client, auth, npz(X=X, y=Y), "good.npz", name="good")
    assert good.status_code == 201, good.text
    cases = _bad_cases(tmp_path)
    cases += [("duplicate content", npz(X=X.astype(np.float32), y=Y.astype(np.int32)), "again.npz", 409,
               "already uploaded as data set"),
              ("duplicate name", npz(X=X + 1, y=Y), "other.npz", 409, "a data set named 'good' exists")]
    uploads.assert_refused_and_nothing_stored(client, auth, "/api/datasets", cases, settings.datasets_dir)
    before = client.get("/api/datasets").json()
    for extra, code, reason in [
        ({"headers": {}}, 401, ""),
        ({"data": {"path": "x.npz"}}, 422, "PLASTICITY_DATASET_IMPORT_DIR is unset"),
        ({"data": {"name": "Bad Name!"}, "files": {"file": ("a.npz", npz(X=X * 2, y=Y))}}, 422, "name"),
        ({}, 422, "send either a file"),
    ]:
        kwargs = {"headers": auth, **extra}
        r = client.post("/api/datasets", **kwargs)
        assert r.status_code == code and reason in r.text, (extra, r.text)
        assert client.get("/api/datasets").json() == before


def test_an_insert_race_is_a_409_and_leaves_no_new_file(client: TestClient, auth: dict[str, str], settings: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from service.db.repositories import datasets as repo

    uploads.check_insert_race(client, auth, "/api/datasets", repo, monkeypatch, npz(X=X, y=Y), npz(X=X + 1, y=Y),
                              settings.datasets_dir, "data set")


def test_jobs_on_a_data_set_are_checked_against_it(client: TestClient, auth: dict[str, str]) -> None:
    d = upload(client, auth, npz(X=X, y=Y), "three.npz").json()
    base = {"network": {"widths": [16, 8, 3]}, "rule": {"terms": ["F0"]},
            "task": {"dataset": d["ref"], "ways": 3, "shots": 2, "queries": 2}, "meta": {"episodes": 1}}
    for change, where, reason in [
        ({"network": {"widths": [784, 8, 3]}}, ["body", "network", "widths", 0], "the input width must be 16"),
        ({"task": {**base["task"], "ways": 4}, "network": {"widths": [16, 8, 4]}}, ["body", "task"],
         "ways=4 but the 'train' split"),
        ({"task": {**base["task"], "shots": 10}}, ["body", "task"], "needs shots + queries = 12"),
        ({"task": {**base["task"], "dataset": "upload:99"}}, ["body", "task", "dataset"], "no uploaded data set"),
        ({"task": {**base["task"], "upload": {"sha256": "0" * 64}}}, ["body", "task", "upload", "sha256"],
         "has checksum"),
        ({"task": {**base["task"], "upload": {"sha256": d["sha256"], "dir": "/etc"}}},
         ["body", "task", "upload", "dir"], "server paths"),
    ]:
        r = client.post("/api/jobs", json={**base, **change}, headers=auth)
        assert r.status_code == 422, (change, r.text)
        problems = r.json()["detail"]
        assert any(p["loc"] == where and reason in p["msg"] for p in problems), (change, problems)
    bad_form = client.post("/api/jobs", json={**base, "task": {**base["task"], "dataset": "upload:x"}}, headers=auth)
    assert bad_form.status_code == 422
    ok = client.post("/api/jobs", json=base, headers=auth)
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["task"]["upload"] == {"name": d["name"], "sha256": d["sha256"], "dir": None}


# --- NWB -------------------------------------------------------------------------------------------------------------
@SQLITE_ONLY
def test_nwb_uploads_hold_the_same_content_as_npz(client: TestClient, auth: dict[str, str], tmp_path: Path) -> None:
    r = upload(client, auth, nwb_bytes(tmp_path, X, Y), "rec.nwb", name="from-nwb")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["format"], d["n"], d["dim"], d["classes"]) == ("nwb", 60, 16, [0, 1, 2])
    same = upload(client, auth, npz(X=X, y=Y), "same.npz")     # the checksum is of the content, not the file
    assert same.status_code == 409 and f"data set {d['id']}" in same.json()["detail"]
    trials = upload(client, auth, nwb_bytes(tmp_path, X + 1, Y, labels_in_trials=True), "trials.nwb")
    assert trials.status_code == 201, trials.text
    assert trials.json()["class_counts"] == [20, 20, 20]


# --- the acceptance: digits uploaded = built-in digits ----------------------------------------------------------------
GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on my dataset mydigits, at most 2 terms, tiny"


def _front(client: TestClient, job_id: int) -> list[tuple[Any, ...]]:
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return [(p["terms"], p["n_terms"], p["heldout_accuracy"], p["heldout_ci95"], p["selected"]) for p in job["front"]]


@SQLITE_ONLY
def test_an_uploaded_digits_gives_the_numbers_of_the_builtin_digits(client: TestClient, auth: dict[str, str],
                                                                    app: Any, settings: Any) -> None:
    d = upload(client, auth, digits_npz(), "digits.npz", name="mydigits").json()
    r = client.post("/api/jobs", json={"goal": GOAL}, headers=auth)
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["spec"]["task"]["dataset"] == d["ref"] and up["spec"]["network"]["widths"][0] == 64
    run_jobs(app, settings)
    front_up = _front(client, up["id"])
    assert len(front_up) >= 2

    builtin = DiscoverySpec.model_validate(up["spec"]).model_dump(mode="json")
    builtin["task"].update(dataset="digits", upload=None)
    r2 = client.post("/api/jobs", json=builtin, headers=auth)
    assert r2.status_code == 201, r2.text
    run_jobs(app, settings)
    assert _front(client, r2.json()["id"]) == front_up
    a = client.get(f"/api/jobs/{up['id']}").json()
    b = client.get(f"/api/jobs/{r2.json()['id']}").json()
    assert (a["heldout_accuracy"], a["heldout_ci95"]) == (b["heldout_accuracy"], b["heldout_ci95"])
    assert [p["expression"] for p in a["front"]] == [p["expression"] for p in b["front"]]
    rule = client.get(f"/api/rules/{a['rule_ids'][0]}").json()
    assert rule["provenance"]["dataset"] == {"ref": d["ref"], "name": "mydigits", "sha256": d["sha256"]}


# --- deletion ----------------------------------------------------------------------------------------------------------
def test_delete_is_refused_while_a_job_runs_and_the_job_keeps_the_provenance(
        client: TestClient, auth: dict[str, str], app: Any, settings: Any) -> None:
    d = upload(client, auth, npz(X=X, y=Y), "three.npz", name="three").json()
    spec = {"network": {"widths": [16, 8, 3]}, "rule": {"terms": ["F0"]},
            "task": {"dataset": d["ref"], "ways": 3, "shots": 2, "queries": 2}, "meta": {"episodes": 1}}
    job_id = client.post("/api/jobs", json=spec, headers=auth).json()["id"]
    queued = client.delete(f"/api/datasets/{d['id']}", headers=auth)
    assert queued.status_code == 409 and f"job(s) {job_id} (queued)" in queued.json()["detail"]
    with session_scope(app.state.sessions) as s:
        assert set_status(s, Job, job_id, RUNNING, event="started")
    running = client.delete(f"/api/datasets/{d['id']}", headers=auth)
    assert running.status_code == 409 and "(running)" in running.json()["detail"]
    assert client.delete(f"/api/datasets/{d['id']}").status_code == 401
    with session_scope(app.state.sessions) as s:
        assert set_status(s, Job, job_id, SUCCEEDED, event="succeeded")
    assert client.delete(f"/api/datasets/{d['id']}", headers=auth).status_code == 204
    assert client.get("/api/datasets").json() == [] and stored_files(settings) == []
    assert client.delete(f"/api/datasets/{d['id']}", headers=auth).status_code == 404
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["spec"]["task"]["dataset"] == d["ref"]
    assert job["spec"]["task"]["upload"] == {"name": "three", "sha256": d["sha256"], "dir": None}
    page = client.get(f"/jobs/{job_id}").text
    assert d["sha256"] in page and "three" in page


@SQLITE_ONLY
def test_only_the_owner_deletes(settings: Any) -> None:
    from service.app import create_app

    application = create_app(settings.with_(api_tokens=(TEST_TOKEN, "other-token")), dispatcher=False)
    with TestClient(application) as c:
        d = upload(c, {"Authorization": f"Bearer {TEST_TOKEN}"}, npz(X=X, y=Y)).json()
        r = c.delete(f"/api/datasets/{d['id']}", headers={"Authorization": "Bearer other-token"})
        assert r.status_code == 403 and "only its owner" in r.json()["detail"]
    application.state.engine.dispose()


# --- the engine reads the file the spec names ----------------------------------------------------------------------
def test_the_engine_reads_the_file_the_spec_names_and_refuses_a_changed_one(tmp_path: Path) -> None:
    from discovery.data import DatasetError
    from discovery.data.uploads import canonical, load_task_data, save_canonical
    from discovery.spec import TaskSpec
    from service.uploads import engine_spec

    data = canonical(X, Y)
    path = save_canonical(tmp_path, data)
    task = TaskSpec(dataset="upload:1", ways=3, upload={"name": "three", "sha256": data.sha256})
    spec = DiscoverySpec(task=task, network={"widths": [16, 3]})
    sent = engine_spec(spec, type("S", (), {"datasets_dir": tmp_path})())   # what the workers receive
    assert sent.task.upload.dir == str(tmp_path) and spec.task.upload.dir is None
    loaded = load_task_data(sent.task, cache=False)
    assert loaded.n == 60 and loaded.dim == 16 and loaded.n_classes == 3
    assert float(loaded.images.min()) == 0.0 and float(loaded.images.max()) == 1.0
    np.savez(path, X=data.x * 2, y=data.y)
    with pytest.raises(DatasetError, match="has checksum"):
        load_task_data(sent.task, cache=False)
    with pytest.raises(DatasetError, match="needs task.upload"):
        load_task_data(TaskSpec(dataset="upload:1"))


# --- the migration -----------------------------------------------------------------------------------------------------
def test_migration_0005_up_and_down(db_url: str, request: pytest.FixtureRequest) -> None:
    uploads.check_migration_adds_table(db_url, request, "0004_front_points", "0005_datasets", "datasets")


# --- the client and the CLI verbs ----------------------------------------------------------------------------------
@SQLITE_ONLY
def test_client_and_cli_verbs(client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from service.cli.main import app as cli
    from service.client import http

    transport = client._transport  # the app in-process
    base = http.Client

    class InProcess(base):  # type: ignore[misc, valid-type]
        def __init__(self, url: str | None = None, token: str | None = None, **kw: Any) -> None:
            super().__init__("http://testserver", token, transport=transport)

    c = InProcess(token=TEST_TOKEN)
    file = tmp_path / "three.npz"
    file.write_bytes(npz(X=X, y=Y))
    d = c.upload_dataset(file, name="three")
    assert d.ref == f"upload:{d.id}" and [x.id for x in c.datasets()] == [d.id] and c.dataset(d.id) == d
    with pytest.raises(http.Conflict, match="already uploaded"):
        c.upload_dataset(file)
    c.delete_dataset(d)
    assert c.datasets() == []

    monkeypatch.setattr(http, "Client", InProcess)
    env = {"PLASTICITY_API_TOKENS": TEST_TOKEN, "COLUMNS": "200"}
    run = CliRunner().invoke(cli, ["datasets", "upload", str(file), "--name", "cli-set", "--json"], env=env)
    assert run.exit_code == 0, run.output
    assert '"name": "cli-set"' in run.output
    listed = CliRunner().invoke(cli, ["datasets", "list"], env=env)
    assert listed.exit_code == 0 and "cli-set" in listed.output
    new_id = c.datasets()[0].id
    again = CliRunner().invoke(cli, ["datasets", "upload", str(file)], env=env)
    assert again.exit_code != 0 and "already uploaded" in again.output
    gone = CliRunner().invoke(cli, ["datasets", "delete", str(new_id)], env=env)
    assert gone.exit_code == 0 and c.datasets() == []
