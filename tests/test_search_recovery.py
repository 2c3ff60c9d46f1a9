"""kill -9 of the Ray worker running an open search, mid-stage, through a live server (issue 29, tiny size).

A goal's open search (forward selection over the 16-term library, synthetic data, tiny network) is submitted twice
to one live server on its own local Ray: the first job's ``ray::JobActor`` process is killed with SIGKILL inside
its last fit stage, after that stage's first checkpoint; the second job runs uninterrupted. The killed job must
succeed on a later attempt, report ``resumed_from_episode`` inside the stage (> 0, a checkpoint of the stage,
within ``checkpoint_every`` of the kill), say in its events which stage resumed and from which episode, and store
the same front as the uninterrupted job, bit for bit (θ of every front rule, held-out accuracy and CI, as stored
in ``front_points``). Figures go to ``test-artifacts/search_recovery.json``.

The issue's size (3,000 episodes, kill at ≥ 300) runs with ``PLASTICITY_RECOVERY_EPISODES=3000``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ARTIFACTS, FINAL, LiveServer, wait_for
from tests.test_recovery import is_job_actor

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, tiny"
EPISODES = int(os.environ.get("PLASTICITY_RECOVERY_EPISODES", "1500"))
EVERY = int(os.environ.get("PLASTICITY_RECOVERY_EVERY", "20"))
SCREEN = 16


def _spec(http: httpx.Client) -> dict[str, Any]:
    """The goal's resolved spec (an open forward search over the library), at most 2 terms, EPISODES episodes
    and a checkpoint every EVERY episodes (no goal phrase sets the checkpoint interval)."""
    answer = http.get("/api/goal", params={"text": f"{GOAL}, for {EPISODES} episodes, at most 2 terms"})
    assert answer.status_code == 200, answer.text
    spec = answer.json()["spec"]
    assert spec["search"]["method"] == "forward" and spec["rule"]["pool"] == "library", spec
    spec["meta"]["checkpoint_every"] = EVERY
    spec["search"]["screen_episodes"] = SCREEN
    return spec


def _front(server: LiveServer, job_id: int) -> list[tuple]:
    """The job's stored front rows (terms, θ, held-out accuracy and CI, selected), in front order."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{server.data_dir / 'plasticity.db'}")
    with engine.connect() as c:
        rows = c.execute(text("SELECT terms, theta, heldout_accuracy, heldout_ci95, heldout_episodes, selected "
                              "FROM front_points WHERE job_id = :j ORDER BY position"), {"j": job_id}).all()
    engine.dispose()
    return [(json.loads(t) if isinstance(t, str) else t, json.loads(th) if isinstance(th, str) else th, *rest)
            for t, th, *rest in rows]


def _last_checkpoint(job_folder: Path) -> int:
    """The stage episode of the newest trainer checkpoint under a job's checkpoint folder (screener files aside)."""
    from discovery.feedforward.checkpoint import read_checkpoint

    files = [f for f in job_folder.glob("stage_*/*") if f.is_file() and f.name != "screener.pt"
             and not f.name.endswith(".tmp")]
    assert files, f"no checkpoint under {job_folder}"
    return int(read_checkpoint(max(files, key=lambda f: f.stat().st_mtime_ns))["episode"])


def test_kill_9_mid_stage_resumes_inside_the_stage_with_the_uninterrupted_front(
    live_server_factory: Callable[..., LiveServer], tmp_path
) -> None:
    server = live_server_factory(tmp_path / "data", env={"PLASTICITY_MAX_ATTEMPTS": "3",
                                                         "PLASTICITY_POLL_SECONDS": "0.2"})
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        spec = _spec(http)
        per_fit = (EPISODES - SCREEN) // 2
        last_stage = per_fit + SCREEN              # the job's first episode of stage 3, "fit 2 terms"
        kill_at = last_stage + max(EVERY + 1, (EPISODES - last_stage) // 5)   # ≥ one checkpoint into the stage
        ids = []
        for _ in range(2):                         # the killed job and the uninterrupted one, same spec and seed
            r = http.post("/api/jobs", json=spec, headers=auth)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        killed, whole = ids

        def job(job_id: int, events: bool = False) -> dict[str, Any]:
            return http.get(f"/api/jobs/{job_id}", params={"events": events}).json()

        running = wait_for(lambda: job(killed, True),
                           lambda j: (j["progress"] or {}).get("phase") == "fit 2 terms"
                           and (j["progress"] or {}).get("episode", 0) >= kill_at
                           and any(e["kind"] == "worker" for e in j["events"]),
                           300, f"job {killed} to pass episode {kill_at} of its last fit stage", server,
                           interval=0.05)
        pid = next(e["data"]["pid"] for e in running["events"] if e["kind"] == "worker")
        assert is_job_actor(pid), f"pid {pid} is not a ray::JobActor"
        seen = job(killed)["progress"]
        assert seen["phase"] == "fit 2 terms" and seen["episode"] < EPISODES, seen   # mid-stage
        os.kill(pid, signal.SIGSTOP)               # frozen: no checkpoint is written from here on
        saved = _last_checkpoint(tmp_path / "data" / "checkpoints" / f"job-{killed}")
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        final = wait_for(lambda: job(killed, True), lambda j: j["status"] in FINAL, 300, f"job {killed}", server)
        t_done = time.monotonic()
        reference = wait_for(lambda: job(whole, True), lambda j: j["status"] in FINAL, 300, f"job {whole}", server)

    assert final["status"] == "succeeded", final
    assert reference["status"] == "succeeded" and reference["attempts"] == 1, reference
    assert final["attempts"] >= 2
    resumed = final["resumed_from_episode"]
    kill_episode = seen["episode"]                 # the worker was at this episode or a little past it
    assert resumed is not None and resumed > 0
    assert last_stage + EVERY <= resumed and (resumed - last_stage) % EVERY == 0, resumed   # a stage checkpoint
    # the server's progress lags the worker by a poll, so the exact check is on disk: the attempt resumed from the
    # last checkpoint written before the kill (kill episode in [saved, saved + EVERY)), and the server had seen
    # the worker at most a checkpoint interval before it
    assert resumed == last_stage + saved, (resumed, last_stage, saved)
    assert resumed > kill_episode - EVERY, (resumed, kill_episode)
    notes = [e for e in final["events"] if e["kind"] == "resumed"]
    assert len(notes) == 1, final["events"]
    assert notes[0]["data"]["episode"] == resumed and notes[0]["data"]["attempt"] >= 2
    assert notes[0]["message"].endswith(f"resumed stage 3 (fit 2 terms) at episode {resumed}"), notes[0]
    assert not [e for e in reference["events"] if e["kind"] == "resumed"]
    assert reference["resumed_from_episode"] is None

    front, expected = _front(server, killed), _front(server, whole)
    assert len(front) == 2 and front == expected          # terms, θ, held-out accuracy, CI: bit for bit
    assert [p["rule_id"] for p in final["front"]] == [p["rule_id"] for p in reference["front"]]

    figures = {"episodes": EPISODES, "checkpoint_every": EVERY, "stage_3_starts_at": last_stage,
               "episode_seen_before_kill": kill_episode, "resumed_from_episode": resumed,
               "last_checkpoint_in_stage": saved, "episodes_recomputed_below": EVERY,
               "kill_to_success_s": round(t_done - t_kill, 1), "attempts": final["attempts"],
               "resumed_event": notes[0]["message"], "front_theta": [p[1] for p in front],
               "front_bit_identical": front == expected}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"search_recovery_{EPISODES}.json").write_text(json.dumps(figures, indent=2))
    print("search recovery figures:", figures)
