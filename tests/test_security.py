"""Security of what the workers load and what the API shows (issue 12).

- checkpoints hold tensors and JSON only: a real trainer state round-trips exactly; a pickle that would run code
  is refused by the safe loader (the code does not run, the run starts afresh); no ``weights_only=False`` anywhere;
- the compiled-kernel cache is a private folder (created 0700) whose owner and mode are checked before a library
  is loaded from it: a folder or library others can write, a symlink, or another user's folder is refused with a
  clear error;
- no tracebacks in public responses: a worker's traceback tail goes to the server log, the job's error and events
  carry one short line (also for event rows written by an earlier version).
"""

from __future__ import annotations

import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from discovery.feedforward.checkpoint import (
    CheckpointFormatError,
    decode_state,
    encode_state,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from tests.conftest import REPO_ROOT, FakeState, FakeWorkers


# --- checkpoints --------------------------------------------------------------------------------------------
def test_a_trainer_state_round_trips_as_tensors_and_json(tmp_path: Path) -> None:
    """The state the meta-trainer checkpoints (Adam with int keys and tuples, generator state, history) comes back
    equal, from a file that the weights-only loader reads."""
    theta = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = torch.optim.Adam([theta], lr=1e-3)
    theta.grad = torch.ones_like(theta)
    opt.step()
    gen = torch.Generator().manual_seed(3)
    state = {"episode": 7, "theta": theta.detach().clone(), "opt": opt.state_dict(), "gen": gen.get_state(),
             "history": [{"episode": 1, "meta_loss": float("nan"), "theta": {"F0": 0.1}, "e1": (0.5, 0.25)}],
             "last_good_theta": None, "spec": {"meta": {"lr": 1e-3, "pool": ("F0", "F2")}, "__odd": 1}}
    save_checkpoint(tmp_path, state, "ckpt.pt")
    torch.load(tmp_path / "ckpt.pt", weights_only=True)  # the safe loader reads the file as it is
    back = read_checkpoint(tmp_path / "ckpt.pt")
    assert back["episode"] == 7 and torch.equal(back["theta"], state["theta"])
    assert torch.equal(back["gen"], state["gen"])
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back["opt"]["state"]) == {0} and torch.equal(back["opt"]["state"][0]["exp_avg"],
                                                           state["opt"]["state"][0]["exp_avg"])
    assert back["spec"] == state["spec"] and back["history"][0]["e1"] == (0.5, 0.25)
    assert back["history"][0]["meta_loss"] != back["history"][0]["meta_loss"]  # NaN kept
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=1e-3)
    opt2.load_state_dict(back["opt"])  # Adam takes it back
    assert load_checkpoint(tmp_path, state["spec"], "ckpt.pt") is not None
    assert load_checkpoint(tmp_path, {"other": 1}, "ckpt.pt") is None


def test_objects_other_than_tensors_and_json_are_not_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="tensors and JSON values only"):
        save_checkpoint(tmp_path, {"spec": {}, "fn": os.system}, "x.pt")
    assert not (tmp_path / "x.pt").exists()
    text, tensors = encode_state({"a": (1, [2.5, None]), 3: "int key"})
    assert decode_state(text, tensors) == {"a": (1, [2.5, None]), 3: "int key"}


class _Exploit:
    """Unpickling this runs ``os.system`` (what a tampered checkpoint on a shared volume would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "pwned"
    spec = {"meta": {"episodes": 3}}
    torch.save({"spec": spec, "episode": 2, "payload": _Exploit(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointFormatError, match="not a safe checkpoint"):
        read_checkpoint(tmp_path / "ckpt.pt")
    assert load_checkpoint(tmp_path, spec, "ckpt.pt") is None  # ignored: the run starts afresh
    assert "ignoring checkpoint" in caplog.text
    assert not marker.exists()  # the code never ran
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(tmp_path / "raw.pt")
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_code() -> None:
    hits = []
    for folder in ("discovery", "workers", "service"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"weights_only\s*=\s*False", line):
                    hits.append(f"{path.relative_to(REPO_ROOT)}:{n}")
    assert not hits, hits


# --- the compiled kernel cache ------------------------------------------------------------------------------
@pytest.fixture
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache" / "kernels"
    monkeypatch.setenv("PLASTICITY_KERNEL_CACHE", str(folder))
    return folder


def test_kernel_cache_is_created_private(kernel_cache: Path) -> None:
    from discovery.feedforward.kernels import ckernel

    assert ckernel._cache_dir() == kernel_cache
    assert stat.S_IMODE(kernel_cache.stat().st_mode) == 0o700
    assert kernel_cache.stat().st_uid == os.getuid()


def test_default_kernel_cache_is_not_in_the_shared_temp_folder(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    import tempfile

    from discovery.feedforward.kernels import ckernel

    monkeypatch.delenv("PLASTICITY_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = ckernel._cache_dir()
    assert folder == tmp_path / "xdg" / "plasticity" / "kernels"
    assert not str(ckernel._default_cache_root()).startswith(tempfile.gettempdir() + "/plasticity")


def test_kernel_cache_open_to_others_is_refused(kernel_cache: Path) -> None:
    from discovery.feedforward.kernels import ckernel

    kernel_cache.mkdir(parents=True)
    kernel_cache.chmod(0o777)
    with pytest.raises(ckernel.KernelCacheError, match="mode 0777"):
        ckernel._cache_dir()
    kernel_cache.chmod(0o700)
    lib = kernel_cache / "fused_double_x.so"
    lib.write_bytes(b"\x7fELF")
    lib.chmod(0o666)
    with pytest.raises(ckernel.KernelCacheError, match="library .* has mode 0666"):
        ckernel.check_private(lib, folder=False)


def test_kernel_cache_symlink_is_refused(kernel_cache: Path, tmp_path: Path) -> None:
    from discovery.feedforward.kernels import ckernel

    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    kernel_cache.parent.mkdir(parents=True)
    kernel_cache.symlink_to(target)
    with pytest.raises(ckernel.KernelCacheError, match="symlink"):
        ckernel._cache_dir()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_kernel_cache_of_another_user_is_refused_before_loading(kernel_cache: Path, monkeypatch) -> None:
    import numpy as np

    from discovery.feedforward.kernels import ckernel

    kernel_cache.mkdir(parents=True, mode=0o700)
    os.chown(kernel_cache, 65534, 65534)
    with pytest.raises(ckernel.KernelCacheError, match="belongs to uid 65534"):
        ckernel._cache_dir()
    # and through load(): refused loudly, not a silent fall back to numba
    monkeypatch.setenv("PLASTICITY_FUSED_BACKEND", "auto")
    ckernel.load.cache_clear()
    try:
        with pytest.raises(ckernel.KernelCacheError):
            ckernel.load(np.float64)
    finally:
        ckernel.load.cache_clear()


# --- no tracebacks in public responses ----------------------------------------------------------------------
TRACEBACK = ('Traceback (most recent call last):\n  File "/srv/discovery/feedforward/trainer.py", line 12, in step\n'
             "    raise ValueError('bad')\nValueError: bad")


def test_worker_traceback_stays_in_the_server_log(settings: Any, app: Any, client: Any, auth: dict[str, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from service.runs.dispatcher import Dispatcher

    fake = FakeWorkers(
        job_script=lambda h: [FakeState("running", {"episode": 1, "total": 2}),
                              FakeState("failed", None, None, "ValueError: bad\n" + TRACEBACK, TRACEBACK)],
        benchmark_script=lambda h: [FakeState("failed", None, None, TRACEBACK, TRACEBACK)],
    )
    d = Dispatcher(settings, app.state.sessions, fake)
    spec = {"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}, "meta": {"episodes": 2}}
    job_id = client.post("/api/jobs", json=spec, headers=auth).json()["id"]
    bench = client.post("/api/benchmarks", json={"expression": "-0.01*e*x.T", "suite": "fa5-online", "tiny": True},
                        headers=auth)
    for _ in range(5):
        d.tick()
    job = client.get(f"/api/jobs/{job_id}", params={"events": True})
    texts = [job.text, client.get("/api/jobs").text, client.get(f"/jobs/{job_id}").text]
    if bench.status_code == 201:
        texts.append(client.get(f"/api/benchmarks/{bench.json()['id']}").text)
    assert job.json()["status"] == "failed" and job.json()["error"] == "ValueError: bad"
    for text in texts:
        assert "Traceback" not in text and "meta.py" not in text, text[:2000]
    assert "Traceback (most recent call last)" in caplog.text  # kept for the operator


def test_old_event_rows_with_tracebacks_are_not_shown(settings: Any, app: Any, client: Any,
                                                      auth: dict[str, str]) -> None:
    from service.db.repositories.events import add_event
    from service.db.session import session_scope

    spec = {"network": {"widths": [784, 16, 10]}, "task": {"dataset": "synthetic"}, "meta": {"episodes": 2}}
    job_id = client.post("/api/jobs", json=spec, headers=auth).json()["id"]
    with session_scope(app.state.sessions) as s:
        add_event(s, "failed", "ValueError: bad\n" + TRACEBACK, job_id=job_id,
                  data={"detail": TRACEBACK, "traceback": TRACEBACK, "episode": 3})
    events = client.get(f"/api/jobs/{job_id}", params={"events": True}).json()["events"]
    last = events[-1]
    assert last["message"] == "ValueError: bad" and last["data"] == {"episode": 3}
