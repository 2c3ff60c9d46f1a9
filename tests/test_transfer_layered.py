"""Per-layer coefficients (docs/transfer.md): tied layers equal the shared rule exactly; the R·K forward-mode
tangents are the exact gradient (finite differences); the depth basis and parameter counts."""

from __future__ import annotations

import pytest
import torch

from discovery.feedforward.trainer import MetaTrainer
from discovery.spec import DiscoverySpec
from discovery.transfer.layered import LayeredTrainer, basis, n_params, param_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THETA = {"F0": 0.02, "F2": -0.015, "F3": -0.001}


def spec(dtype: str = "float64") -> DiscoverySpec:
    return DiscoverySpec.model_validate({
        "network": {"widths": [64, 12, 10, 10], "feedback": "fa"},
        "task": {"dataset": "digits", "ways": 5, "shots": 4, "queries": 3},
        "rule": {"terms": list(THETA), "theta_init": THETA},
        "meta": {"episodes": 2, "meta_batch": 3, "seed": 3, "dtype": dtype, "kernel": "torch", "term_scale": "norm"}})


@pytest.mark.parametrize("mode", ["per-layer", "profile", "shared"])
def test_tied_layers_equal_the_shared_rule_exactly(mode: str) -> None:
    shared = MetaTrainer(spec())
    layered = LayeredTrainer(spec(), coefficients=mode)
    assert layered.layer_theta().tolist() == [list(shared.theta.detach().tolist())] * 3
    assert torch.equal(layered.heldout_values(5), shared.heldout_values(5))
    ep = shared.train_sampler.sample(2, dtype=torch.float64)
    Ws, Bs = shared._weights(2, torch.Generator().manual_seed(1))
    l0, g0, _, W0 = shared.meta_gradient(ep, Ws, Bs)
    l1, g1, _, W1 = layered.meta_gradient(ep, Ws, Bs)
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(W0, W1))
    # ∂L/∂θ_r of the shared rule = Σ_ℓ ∂L/∂θ_{r,ℓ}: the sum over layers (per-layer), the level's gradient (profile)
    g = g1.view(3, layered.basis.shape[1], -1)
    per_term = g.sum(1) if mode == "per-layer" else g[:, 0]
    torch.testing.assert_close(per_term, g0, rtol=1e-9, atol=1e-12)


def test_layered_gradient_matches_finite_differences() -> None:
    t = LayeredTrainer(spec(), coefficients="profile", theta_init={"F2~slope": 0.01})
    ep = t.train_sampler.sample(2, dtype=torch.float64)
    Ws, Bs = t._weights(2, torch.Generator().manual_seed(2))
    _loss, grad, _, _ = t.meta_gradient(ep, Ws, Bs)
    h = 1e-6
    for j in range(len(t.param_ids)):
        with torch.no_grad():
            t.phi[j] += h / t.scale[j]
        up, _, _, _ = t.meta_gradient(ep, Ws, Bs)
        with torch.no_grad():
            t.phi[j] -= 2 * h / t.scale[j]
        down, _, _, _ = t.meta_gradient(ep, Ws, Bs)
        with torch.no_grad():
            t.phi[j] += h / t.scale[j]
        torch.testing.assert_close((up - down) / (2 * h), grad[j], rtol=1e-5, atol=1e-8)


def test_basis_and_parameter_counts() -> None:
    assert basis("profile", 3).tolist() == [[1.0, -1.0], [1.0, 0.0], [1.0, 1.0]]
    assert param_ids(["F0", "F2"], "per-layer", 2) == ["F0@1", "F0@2", "F2@1", "F2@2"]
    assert n_params(4, "shared", 5) == 4 and n_params(4, "profile", 5) == 8 and n_params(4, "per-layer", 5) == 20
