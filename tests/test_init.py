"""The bottleneck family's init, against its configuration: the measured std of every initialised tensor, and
how far each adapter moves its sublayer's output at init, with the bound worked out here from the configured
stds (a 10× larger init fails, and so does a 10× smaller one).

A bottleneck adapter adds U f(D h) to the sublayer output h (d wide; D: d→k, U: k→d). With D's and U's entries
of std σ_D and σ_U, ‖D h‖ ≈ σ_D √k ‖h‖, f = GeLU has slope 1/2 at 0, and ‖U z‖ ≈ σ_U √d ‖z‖, so at init
‖U f(D h)‖ / ‖h‖ ≈ σ_D σ_U √(k d) / 2. The dense entries' std per form:
  dense (Houlsby, Pfeiffer, AdapterDrop): σ (init_std);
  low rank L R, factors of std √(σ/√r): √r · σ/√r = σ;
  PHM, W = Σ_i A_i ⊗ B_i (n terms), A_i ~ N(0, σ²), B_i Glorot uniform over its (k/n, d/n) block (variance
  2/(fan_in + fan_out)): √n · σ · √(2n/(d+k));
  LPHM (Compacter), B_i = s_i t_iᵀ of rank r, s_i and t_i Glorot uniform: √n · σ · √r · √(2/(r+k/n)) · √(2/(d/n+r)).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ALL_FAMILIES, TINY_OPTIONS, model_output, tiny_inputs, tiny_model

import pelt
from pelt.methods import METHODS, get_method, make_config
from pelt.methods.adapters import AdaptedProjection

NEAR = sorted(m for m in METHODS if get_method(m).init_output == "near")
HIDDEN, BOTTLENECK = 32, 8  # the tiny models' width, TINY_OPTIONS' bottleneck


def test_the_near_identity_methods_are_the_bottleneck_family() -> None:
    assert NEAR == ["adapter", "adapter-lowrank", "adapterdrop", "compacter", "compacter++", "pfeiffer", "phm-adapter"]


def config_of(method: str, **options):
    return make_config(method, **{**TINY_OPTIONS.get(method, {}), **options})


def dense_std(method: str, config, d: int = HIDDEN, k: int = BOTTLENECK) -> float:
    """The std of D's and U's dense entries at init, from the configuration alone (see the module docstring)."""
    sigma = config.init_std
    if method in ("adapter", "pfeiffer", "adapterdrop", "adapter-lowrank"):
        return sigma
    n = config.n
    if method == "phm-adapter":
        return math.sqrt(n) * sigma * math.sqrt(2 * n / (d + k))
    r = config.rank
    return math.sqrt(n) * sigma * math.sqrt(r) * math.sqrt(2 / (r + k / n)) * math.sqrt(2 / (d / n + r))


def adapter_moves(model: torch.nn.Module, family: str) -> list[float]:
    """‖adapted − sublayer‖ / ‖sublayer‖ at every adapted projection, on the tiny inputs."""
    moves = []

    def record(module: AdaptedProjection, args: tuple, output: torch.Tensor) -> None:
        sublayer = module.base_layer(args[0])
        moves.append(((output - sublayer).norm() / sublayer.norm()).item())

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, AdaptedProjection)]
    model_output(model, tiny_inputs(family, batch=8, length=12))
    for hook in hooks:
        hook.remove()
    return moves


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize(("method", "options"), [(m, {}) for m in NEAR] + [("adapter-lowrank", {"rank": 2})])
def test_every_adapter_starts_as_near_the_base_model_as_its_init_std_says(method: str, options: dict,
                                                                          family: str) -> None:
    torch.manual_seed(0)
    config = config_of(method, **options)
    model = pelt.apply_method(tiny_model(family), config)
    moves = adapter_moves(model, family)
    assert moves, "no adapted projection ran"
    expected = dense_std(method, config) ** 2 * math.sqrt(BOTTLENECK * HIDDEN) / 2
    median = sorted(moves)[len(moves) // 2]
    assert expected / 4 < median < 4 * expected, f"median move {median:.3g}, the init std gives {expected:.3g}"


@pytest.mark.parametrize("method", NEAR)
def test_ten_times_the_init_std_moves_the_output_about_a_hundred_times_more(method: str) -> None:
    """The bound above is tight enough to tell: both D and U scale with the init std."""
    moves = {}
    for scale in (1, 10):
        torch.manual_seed(0)
        config = config_of(method)
        config = config_of(method, init_std=config.init_std * scale)
        moves[scale] = sorted(adapter_moves(pelt.apply_method(tiny_model("bert"), config), "bert"))
    ratio = moves[10][len(moves[10]) // 2] / moves[1][len(moves[1]) // 2]
    assert 40 < ratio < 250, ratio


def _pooled(model: torch.nn.Module, suffix: str) -> torch.Tensor:
    tensors = [p.detach().flatten() for n, p in model.named_parameters() if n.endswith(suffix)]
    assert tensors, f"no parameter ends with {suffix}"
    return torch.cat(tensors)


def _glorot_std(fan_in: float, fan_out: float) -> float:
    return math.sqrt(2 / (fan_in + fan_out))  # uniform(±√(6/(fan_in+fan_out))): variance bound² / 3


VARIANTS = [(m, {}) for m in NEAR] + [("adapter-lowrank", {"rank": 2}), ("compacter", {"bottleneck": 16, "rank": 2})]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize(("method", "options"), VARIANTS)
def test_measured_init_stds_are_the_configured_ones(method: str, options: dict, family: str) -> None:
    torch.manual_seed(0)
    config = config_of(method, **options)
    model = pelt.apply_method(tiny_model(family), config)
    sigma, d, k = config.init_std, HIDDEN, config.bottleneck
    if method in ("adapter", "pfeiffer", "adapterdrop"):
        expected = {"adapter.down.weight": sigma, "adapter.up.weight": sigma}
    elif method == "adapter-lowrank":
        factor = math.sqrt(sigma / math.sqrt(config.rank))
        expected = {"down.left": factor, "down.right": factor, "up.left": factor, "up.right": factor}
    elif method == "phm-adapter":
        n = config.n
        expected = {"phm_rule": sigma, "phm_weight": _glorot_std(d / n, k / n)}
    else:  # Compacter: one A_i set for the whole model, the rank-r factors Glorot over their block
        n, r = config.n, config.rank
        shared = [n_ for n_ in model.pelt_state.added if n_.endswith("phm_rule")]
        assert len(shared) == 1, shared  # shared by every projection
        expected = {shared[0]: sigma, "down.phm_left": _glorot_std(r, k / n), "down.phm_right": _glorot_std(d / n, r),
                    "up.phm_left": _glorot_std(r, d / n), "up.phm_right": _glorot_std(k / n, r)}
    for suffix, std in expected.items():
        measured = _pooled(model, suffix).std().item()
        assert 0.7 * std < measured < 1.3 * std, f"{suffix}: std {measured:.3g}, configured {std:.3g}"
    assert all(float(_pooled(model, name).abs().max()) == 0 for name in ("adapter.down.bias", "adapter.up.bias"))
