"""Terms are shown as formulas, ids as a secondary label (issue #23): the rule page, the job page's θ table and front,
the leaderboard's family filter (page and API), the CLI and the client."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.rulebook import term_formula, term_label

GENERATED = "T4d4340c6"   # a generated library id: e 1_preᵀ


@pytest.mark.parametrize(("term_id", "text", "family"), [
    ("F9", "y*x.T - y*(y.T*W)", "feedforward"), (GENERATED, "e*one_pre.T", "feedforward"),
    ("rec_decay", "-W", "recurrent"), ("rec_dW1", "-(G*u*r.T)", "recurrent")])
def test_every_family_s_terms_have_a_formula(term_id: str, text: str, family: str) -> None:
    info = term_formula(term_id)
    assert info is not None and info["text"] == text and info["family"] == family and info["latex"]
    assert term_label(term_id) == f"{text}  [{term_id}]"
    assert term_formula("no-such-term") is None and term_label("no-such-term") == "no-such-term"


def test_the_rule_and_job_pages_show_formulas(client: TestClient, auth: dict[str, str], app: Any,
                                              settings: Any) -> None:
    from service.runs.dispatcher import Dispatcher
    from tests.conftest import FakeState, FakeWorkers, fake_discovery_result

    theta = {"F0": 0.01, GENERATED: -0.002}

    def script(handle: Any) -> list[Any]:
        return [FakeState("running", {"episode": 1, "total": 2, "theta": theta}),
                FakeState("succeeded", {"episode": 2, "total": 2, "theta": theta}, fake_discovery_result(theta))]

    app.state.dispatcher = dispatcher = Dispatcher(settings, app.state.sessions, FakeWorkers(job_script=script))
    job_id = client.post("/api/jobs", json={"goal": "depth-2 with F0 tiny"}, headers=auth).json()["id"]
    for _ in range(3):
        dispatcher.tick()
    job_page = client.get(f"/jobs/{job_id}").text
    theta_table = job_page[job_page.index('id="theta"'):job_page.index("</table>", job_page.index('id="theta"'))]
    assert f'title="{GENERATED}: e*one_pre.T"' in theta_table and "<svg" in theta_table   # formula + id label
    [rule_id] = client.get(f"/api/jobs/{job_id}").json()["rule_ids"]
    page = client.get(f"/rules/{rule_id}").text
    table = page[page.index('id="coefficients"'):page.index("</table>", page.index('id="coefficients"'))]
    assert f'title="{GENERATED}: e*one_pre.T"' in table and 'class="term-id' in table and "<svg" in table


def test_the_leaderboard_filters_by_family(client: TestClient, auth: dict[str, str], app: Any) -> None:
    from service.db.models import SUCCEEDED, BenchmarkRun, BenchmarkScore
    from service.db.session import session_scope

    ff = client.post("/api/rules", json={"name": "ff", "expression": "-0.01*e*x.T"}, headers=auth).json()
    rec = client.post("/api/rules", json={"name": "rec", "expression": "0.1*dW4"}, headers=auth).json()
    with session_scope(app.state.sessions) as s:
        run = BenchmarkRun(suite="fixedpoint-linear", owner="t", tiny=True, seed=0, status=SUCCEEDED)
        s.add(run)
        s.flush()
        s.add(BenchmarkScore(run_id=run.id, suite=run.suite, learner="dW1", origin="baseline", score=-1.0))
        for rule, score in ((ff, -0.5), (rec, -4.0)):
            s.add(BenchmarkScore(run_id=run.id, suite=run.suite, learner="rule", origin="user", score=score,
                                 rule_id=rule["id"]))

    def names(**params: str) -> list[str]:
        board = client.get("/api/leaderboard", params={"suite": "fixedpoint-linear", **params}).json()
        return [e["name"] for e in board["entries"]]

    assert names() == ["rec", "dW1", "ff"]
    assert names(family="recurrent") == ["rec", "dW1"] and names(family="feedforward") == ["dW1", "ff"]
    board = client.get("/api/leaderboard", params={"suite": "fixedpoint-linear", "family": "recurrent"}).json()
    assert board["family"] == "recurrent" and board["entries"][0]["family"] == "recurrent"
    assert client.get("/api/leaderboard", params={"family": "nope"}).status_code == 422
    page = client.get("/", params={"suite": "fixedpoint-linear", "family": "recurrent"}).text
    assert ">rec</a>" in page and ">ff</a>" not in page and 'name="family"' in page


def test_the_client_names_term_formulas() -> None:
    from service.api.schemas import RuleOut
    from service.client.http import Client

    rule = RuleOut.model_construct(coefficients={"F0": 0.1, GENERATED: 0.2, "rec_oja": 0.3, "zzz": 1.0})
    assert Client.term_formulas(rule) == {"F0": "-e*x.T", GENERATED: "e*one_pre.T", "rec_oja": "r*r.T - r*(r.T*W)",
                                          "zzz": "zzz"}
