"""Rule inference from recordings (discovery/inference, docs/inference.md): the term features, recovery of Oja's
rule on a tiny circuit, NWB/npz round trips through the simulator, clear errors for bad recordings, the explained
variance of weight changes against the θ = 0 null, and the transient warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discovery.inference import (
    InferenceResult,
    RecordingError,
    explained_variance,
    infer_rule,
    read_npz,
    read_nwb,
    read_recording,
    simulate,
    validate,
    write_npz,
    write_nwb,
)
from discovery.inference.features import LIBRARY, features
from discovery.inference.fit import predict_changes
from discovery.unsupervised.terms import OJA_DECAY, OJA_HEBB, TermEvaluator


@pytest.fixture(scope="module")
def tiny():
    return simulate(n_pre=8, n_post=2, n_steps=300, n_trials=4, w0_scale=0.05, noise=0.05, seed=3)


def test_features_equal_the_library_evaluator_when_y_is_wx():
    rng = np.random.default_rng(0)
    x, W = rng.normal(size=(4, 5)), rng.normal(size=(4, 3, 5))
    y = np.einsum("tnm,tm->tn", W, x)
    F = features(x, y, W)
    ev = TermEvaluator(LIBRARY)
    for r in range(len(LIBRARY)):
        theta = torch.zeros(4, len(LIBRARY), dtype=torch.float64)
        theta[:, r] = 1
        dW, _ = ev.delta(theta, torch.tensor(W), torch.tensor(x))
        np.testing.assert_allclose(np.broadcast_to(dW.numpy(), F[:, r].shape), F[:, r], rtol=1e-12, atol=1e-12)


def test_recovers_oja_on_a_tiny_circuit(tiny):
    res = infer_rule(tiny.recording, n_bootstrap=50)
    assert isinstance(res, InferenceResult)
    assert set(res.theta) == {OJA_HEBB, OJA_DECAY}
    assert res.theta[OJA_HEBB] > 0 > res.theta[OJA_DECAY]
    for k, v in tiny.theta.items():
        assert abs(res.theta[k] - v) / abs(v) < 0.1
        c = res.coefficients[k]
        assert c.ci_low <= res.theta[k] <= c.ci_high and c.std > 0
    assert res.heldout_explained_variance > 0.9
    assert res.provenance["origin"] == "inferred"
    assert res.rule.kind == "unsupervised" and res.rule.canonical.startswith("unsupervised/v1:")
    assert sum(p.selected for p in res.front) == 1
    assert [p.n_terms for p in res.front] == sorted(p.n_terms for p in res.front)
    assert not res.warnings
    InferenceResult.model_validate_json(res.model_dump_json())     # storable as it is


def test_nwb_round_trip(tiny, tmp_path):
    rec = tiny.recording
    back = read_nwb(write_nwb(rec, tmp_path / "rec.nwb"))
    for a, b in ((rec.pre, back.pre), (rec.post, back.post), (rec.weights, back.weights)):
        np.testing.assert_array_equal(a, b)
    assert back.dt == rec.dt and back.trial_starts == rec.trial_starts and back.circuit == rec.circuit


def test_npz_round_trip_and_subsampling(tmp_path):
    sim = simulate(n_pre=8, n_post=3, n_steps=20, n_trials=2, subsample=(5, 2), dt=0.01, seed=1)
    rec = sim.recording
    assert rec.pre.shape == (40, 5) and rec.weights.shape == (40, 2, 5)
    back = read_recording(write_npz(rec, tmp_path / "rec.npz"))
    np.testing.assert_array_equal(back.weights, rec.weights)
    assert back.dt == pytest.approx(0.01) and back.trial_starts == (0, 20)


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("missing_post", "missing series 'post'"),
    ("nan", "non-finite"),
    ("length", "length mismatch"),
    ("weights_shape", "must be (T, n_post, n_pre)"),
    ("ndim", "must have 2 dimensions"),
    ("timestamps", "regular step"),
    ("short_trial", "at least 3"),
    ("nonlinearity", "unsupported nonlinearity"),
    ("strings", "real numbers"),
])
def test_bad_npz_recordings_are_clear_errors(tmp_path, case, message):
    rng = np.random.default_rng(0)
    x, y, W = rng.normal(size=(10, 4)), rng.normal(size=(10, 2)), rng.normal(size=(10, 2, 4))
    arrays = {"pre": x, "post": y, "weights": W}
    if case == "missing_post":
        del arrays["post"]
    elif case == "nan":
        arrays["post"] = y.copy()
        arrays["post"][3, 1] = np.nan
    elif case == "length":
        arrays["post"] = y[:9]
    elif case == "weights_shape":
        arrays["weights"] = W.transpose(0, 2, 1)
    elif case == "ndim":
        arrays["pre"] = x[:, :, None]
    elif case == "timestamps":
        arrays["timestamps"] = np.r_[np.arange(9.0), 20.0]
    elif case == "short_trial":
        arrays["trial_starts"] = np.array([0, 8])
    elif case == "nonlinearity":
        arrays["nonlinearity"] = np.array("tanh")
    elif case == "strings":
        arrays["pre"] = np.array([["a"] * 4] * 10)
    with pytest.raises(RecordingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_npz(_npz(tmp_path, **arrays))


def test_bad_nwb_recordings_are_clear_errors(tmp_path):
    from datetime import UTC, datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    fake = tmp_path / "fake.nwb"
    fake.write_bytes(b"not hdf5 at all")
    with pytest.raises(RecordingError, match="not an NWB file"):
        read_nwb(fake)
    nwb = NWBFile(session_description="d", identifier="i", session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    nwb.add_acquisition(TimeSeries(name="pre", data=np.zeros((10, 3)), unit="a.u.", rate=1.0))
    path = tmp_path / "nopost.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    with pytest.raises(RecordingError, match="missing series 'post'"):
        read_nwb(path)


def test_the_weights_fit_sends_activity_only_recordings_to_the_activity_fit():
    rng = np.random.default_rng(0)
    rec = validate(rng.normal(size=(50, 4)), rng.normal(size=(50, 2)))
    with pytest.raises(RecordingError, match="no 'weights' series: use inference from activity"):
        infer_rule(rec)


def test_layered_features_are_the_s3_terms_of_each_layer():
    from discovery.inference.errors import design_of_layers, simulate_layered

    rec = simulate_layered(widths=(4, 3, 2), n_steps=6, n_trials=1, noise=0.0)
    F = design_of_layers(rec, ["F0", "F2", "F9"]).features(0, 6)          # (T, 3, E)
    blocks = []
    for layer in (1, 2):
        x, y, e, ep, W = (rec.activity[layer - 1], rec.activity[layer], rec.errors[layer], rec.errors[layer - 1],
                          rec.weights[layer - 1])
        f0 = -np.einsum("ti,tj->tij", e, x)
        f2 = -np.einsum("ti,tj->tij", e, ep)
        f9 = np.einsum("ti,tj->tij", y, x) - np.einsum("ti,tj->tij", y, np.einsum("tk,tkj->tj", y, W))
        blocks.append(np.stack([f0, f2, f9], 1).reshape(6, 3, -1))
    np.testing.assert_allclose(F, np.concatenate(blocks, 2), rtol=1e-12, atol=1e-12)


def test_explained_variance_is_against_the_null(tiny):
    obs = np.random.default_rng(0).normal(size=(30, 2, 3))
    assert explained_variance(obs, np.zeros_like(obs)) == 0.0
    assert explained_variance(obs, obs) == 1.0
    assert explained_variance(obs, 2 * obs) == pytest.approx(0.0)
    assert explained_variance(obs, -obs) == pytest.approx(-3.0)
    # noise-free recording: the true rule explains all of the weight changes, θ = 0 none of them
    clean = simulate(n_pre=8, n_post=2, n_steps=100, n_trials=1, noise=0.0, seed=2).recording
    obs, pred = predict_changes(clean, tiny.theta, 0, 100)
    assert explained_variance(obs, pred) == pytest.approx(1.0, abs=1e-9)
    obs, pred = predict_changes(clean, {}, 0, 100)
    assert explained_variance(obs, pred) == 0.0


def test_a_converged_recording_is_flagged():
    sim = simulate(n_pre=20, n_post=3, n_steps=3000, n_trials=4, seed=1)
    rec = sim.recording
    late = np.concatenate([np.arange(k * 3000 + 2600, (k + 1) * 3000) for k in range(4)])
    res = infer_rule(validate(rec.pre[late], rec.post[late], rec.weights[late], trial_starts=np.arange(4) * 400),
                     n_bootstrap=20)
    assert any("transient" in w for w in res.warnings)


def test_cli_simulate_writes_a_readable_recording(tmp_path):
    from typer.testing import CliRunner

    from service.cli.main import app

    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "rec.npz"), "--trials", "2", "--steps", "10"])
    assert result.exit_code == 0, result.output
    rec = read_recording(tmp_path / "rec.npz")
    assert rec.weights.shape == (20, 10, 100) and rec.trial_starts == (0, 10)
