"""`plasticity bench --device cuda` where no CUDA device exists: one line naming the reason, exit status 2, no
traceback; and the check itself (`discovery.benchmarks.speed.cuda_problem`)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from discovery.benchmarks import speed
from service.cli.main import app


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_problem_names_the_missing_device(no_cuda) -> None:
    assert speed.cuda_problem("cpu") is None
    msg = speed.cuda_problem("cuda")
    assert msg is not None and "--device cuda" in msg and "no CUDA device is available" in msg
    assert torch.__version__ in msg


def test_bench_main_exits_2_with_one_line(no_cuda, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        speed.main(["--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device is available" in err


def test_cli_bench_cuda_is_a_message_not_a_traceback(no_cuda) -> None:
    res = CliRunner().invoke(app, ["bench", "--device", "cuda"])
    assert res.exit_code == 2
    assert "no CUDA device is available" in res.output
    assert "Traceback" not in res.output
