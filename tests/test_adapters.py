"""The Compacter paper's adapter family: parameter counts, PHM algebra, sharing, placement, bad sizes.

The suite in test_methods.py already runs every adapter method through gradients, save/load and file contents
on every family; this file checks what is specific to adapters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import loss_of, model_output, perturb_trainable, tiny_inputs, tiny_model
from torch import nn

import pelt
from pelt.arch import iter_layers
from pelt.cli import main
from pelt.methods import get_method, make_config
from pelt.methods.adapters import AdaptedProjection, BottleneckAdapter
from pelt.methods.phm import LPHMLinear, PHMLinear, SharedRule, prefer_factored
from pelt.pipeline import count_parameters_for

ADAPTER_METHODS = ["adapter", "pfeiffer", "adapterdrop", "adapter-lowrank", "phm-adapter", "compacter", "compacter++"]


# ---- parameter counts: methods.md's table for T5-base, k = 24 ------------------------------------------------

T5_BASE_TABLE = [
    # method, options, trained params (method + all 62 LayerNorms), % of T5-base as the table prints it
    ("adapter", {}, 1_855_104, "0.8322"),
    ("pfeiffer", {}, 951_360, "0.4268"),
    ("adapterdrop", {"drop_first": 5}, 1_101_984, "0.4944"),
    ("adapter-lowrank", {}, 161_664, "0.0725"),
    ("phm-adapter", {"n": 4}, 534_144, "0.2396"),
    ("phm-adapter", {"n": 8}, 355_968, "0.1597"),
    ("phm-adapter", {"n": 12}, 398_976, "0.1790"),
    ("compacter", {"n": 4}, 161_728, "0.0726"),
    ("compacter", {"n": 12}, 163_392, "0.0733"),
    ("compacter++", {"n": 4}, 104_704, "0.0470"),
    ("compacter++", {"n": 12}, 106_368, "0.0477"),
]


@pytest.mark.parametrize("method,options,count,percent", T5_BASE_TABLE)
def test_t5_base_parameter_counts_match_the_paper_table(method: str, options: dict, count: int,
                                                         percent: str) -> None:
    report = count_parameters_for("t5-base", make_config(method, **options))
    assert report.base_params == 222_903_552
    assert report.groups["layernorm"] == 47_616
    assert report.method_total == count
    assert f"{report.percent(report.method_total):.4f}" == percent
    assert report.groups["head"] == 0  # the LM head stays frozen


def test_params_command_prints_the_compacter_count(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model", "t5-base", "--method", "compacter++", "--n", "12"]) == 0
    out = capsys.readouterr().out
    assert "106,368" in out and "0.0477%" in out


def test_bottleneck_from_reduction_factor_and_override() -> None:
    by_factor = count_parameters_for("t5-base", make_config("pfeiffer", reduction_factor=16))
    explicit = count_parameters_for("t5-base", make_config("pfeiffer", bottleneck=48))
    d, k = 768, 48
    assert by_factor.method_total == explicit.method_total == 24 * (2 * d * k + d + k) + 47_616


# ---- the PHM layer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [None, 1, 3])
def test_phm_weight_is_the_sum_of_kronecker_products(rank: int | None) -> None:
    torch.manual_seed(0)
    layer = PHMLinear(24, 12, 4, rank=rank, path="materialized")
    with torch.no_grad():
        layer.bias.normal_()
    blocks = layer.blocks()
    if rank is not None:
        assert torch.allclose(blocks, torch.stack([layer.phm_left[i] @ layer.phm_right[i].T for i in range(4)]))
    explicit = sum(torch.kron(layer.phm_rule[i], blocks[i]) for i in range(4))
    assert explicit.shape == (12, 24)
    torch.testing.assert_close(layer.dense_weight(), explicit)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, explicit, layer.bias))


@pytest.mark.parametrize("rank", [None, 1, 2])
@pytest.mark.parametrize("shape", [(48, 12), (12, 48)])
def test_factored_and_materialized_paths_agree(rank: int | None, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = PHMLinear(*shape, 4, rank=rank)
    with torch.no_grad():
        layer.phm_rule.normal_()  # away from the tiny init, so a wrong contraction cannot hide
    x = torch.randn(3, 7, shape[0], requires_grad=True)
    results = {}
    for path in ("materialized", "factored"):
        layer.path = path
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        results[path] = (y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()})
    (y_m, gx_m, gp_m), (y_f, gx_f, gp_f) = results["materialized"], results["factored"]
    assert (y_m - y_f).abs().max() < 1e-5
    torch.testing.assert_close(gx_m, gx_f, rtol=1e-5, atol=1e-5)
    for name in gp_m:  # gradients of order 10: compare relative to their size
        torch.testing.assert_close(gp_m[name], gp_f[name], rtol=1e-5, atol=1e-5, msg=name)


def test_auto_path_follows_the_fitted_rule() -> None:
    assert not prefer_factored(768, 24, 4, None)  # full-rank B: never factored
    assert not prefer_factored(24, 768, 4, 1)  # expanding projections: never factored
    assert prefer_factored(768, 48, 4, 1)  # 11× fewer multiply-adds
    assert not prefer_factored(384, 12, 4, 1)  # too small to pay for three contractions
    assert not prefer_factored(768, 48, 4, 1, "cuda")  # measured on CPU only: elsewhere the reference path
    layer = PHMLinear(768, 48, 4, rank=1)
    assert layer.uses_factored("cpu") and not PHMLinear(48, 768, 4, rank=1).uses_factored("cpu")


def test_phm_and_lphm_parameter_counts() -> None:
    d, k, n = 768, 24, 4
    count = lambda layer: sum(p.numel() for p in layer.parameters())  # noqa: E731
    assert count(PHMLinear(d, k, n)) == n**3 + k * d // n + k
    assert count(LPHMLinear(d, k, n)) == n**3 + (k + d) + k  # rank 1: r(k + d)
    assert count(LPHMLinear(d, k, n, rank=3)) == n**3 + 3 * (k + d) + k


def test_phm_layer_rejects_n_not_dividing_its_sizes() -> None:
    with pytest.raises(pelt.PeltError, match="n=5 does not divide the input_size"):
        PHMLinear(24, 10, 5)
    with pytest.raises(pelt.PeltError, match="shape"):
        PHMLinear(24, 12, 4, shared=SharedRule(3, 0.01))


# ---- configuration errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,options,message", [
    ("compacter", {"n": 5, "bottleneck": 24}, "n=5 does not divide the bottleneck"),
    ("phm-adapter", {"n": 0}, "at least 1"),
    ("adapter", {"bottleneck": 0}, "bottleneck must be at least 1"),
    ("adapter", {"reduction_factor": 0}, "reduction_factor"),
    ("adapter-lowrank", {"rank": 0}, "rank must be at least 1"),
    ("compacter", {"rank": 0}, "rank must be at least 1"),
    ("pfeiffer", {"placement": "cross"}, "placement must be one of"),
    ("adapter", {"non_linearity": "softmax"}, "non_linearity"),
    ("adapterdrop", {"drop_first": -1}, "drop_first"),
    ("adapterdrop", {"top_k": 2}, "drop_first=5 and layers/top_k/bottom_k both choose"),
    ("compacter", {"phm_path": "fast"}, "phm_path must be one of"),
    ("adapter", {"init_std": 0.0}, "init_std"),
])
def test_impossible_options_fail_at_configuration(method: str, options: dict, message: str) -> None:
    with pytest.raises(pelt.PeltError, match=message):
        make_config(method, **options)


def test_n_not_dividing_the_hidden_size_fails_before_the_model_changes() -> None:
    model = tiny_model("bert")  # hidden size 32
    before = {n: (p.clone(), p.requires_grad) for n, p in model.named_parameters()}
    with pytest.raises(pelt.PeltError, match="n=3 does not divide the hidden_size"):
        pelt.apply_method(model, make_config("compacter", n=3, bottleneck=6))
    assert not any(isinstance(m, AdaptedProjection) for m in model.modules())
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for name, (value, requires_grad) in before.items():
        assert torch.equal(after[name], value) and after[name].requires_grad == requires_grad == True  # noqa: E712
    assert getattr(model, "pelt_state", None) is None
    pelt.apply_method(model, make_config("compacter", n=4, bottleneck=8))  # the model is still usable


def test_compacter_rank_must_stay_low() -> None:
    with pytest.raises(pelt.PeltError, match="not low-rank"):
        pelt.apply_method(tiny_model("bert"), make_config("compacter", n=4, bottleneck=8, rank=2))


def test_cli_reports_n_not_dividing_as_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model", "t5-base", "--method", "compacter", "--n", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pelt: error: n=7 does not divide")


def test_drop_first_must_leave_a_layer() -> None:
    with pytest.raises(pelt.PeltError, match="leaves no layer"):
        pelt.apply_method(tiny_model("bert"), make_config("adapterdrop", bottleneck=8, drop_first=3))


# ---- behaviour on models -------------------------------------------------------------------------------------


def adapted(method: str, family: str, **options) -> nn.Module:
    options = {"bottleneck": 8, **({"drop_first": 1} if method == "adapterdrop" else {}), **options}
    return pelt.apply_method(tiny_model(family), make_config(method, **options))


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_every_adapter_starts_near_the_identity(method: str, family: str) -> None:
    model = adapted(method, family)
    changes = []

    def record(module: AdaptedProjection, args: tuple, output: torch.Tensor) -> None:
        sublayer = module.base_layer(args[0])
        changes.append(((output - sublayer).norm() / sublayer.norm()).item())

    wrapped = [m for m in model.modules() if isinstance(m, AdaptedProjection)]
    hooks = [m.register_forward_hook(record) for m in wrapped]
    model_output(model, tiny_inputs(family))
    for h in hooks:
        h.remove()
    assert len(changes) == len(wrapped) > 0
    assert max(changes) < 1e-3
    assert max(changes) > 0  # an adapter, not a no-op


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_default_init_is_near_identity_at_real_sizes(method: str) -> None:
    """At T5-base's width with the default bottleneck (24), not only on the tiny test models."""
    torch.manual_seed(0)
    config = make_config(method)
    impl = get_method(method)
    rule = impl.make_shared(config, {})
    k = config.bottleneck_for(768)
    adapter = BottleneckAdapter(impl.make_projection(config, 768, k, rule, {}),
                                impl.make_projection(config, k, 768, rule, {}), config.non_linearity)
    h = torch.randn(64, 768)
    assert ((adapter(h) - h).norm() / h.norm()).item() < 1e-3


@pytest.mark.parametrize("method,per_layer", [("adapter", 2), ("pfeiffer", 1), ("compacter", 2),
                                              ("compacter++", 1)])
def test_t5_placement_skips_cross_attention(method: str, per_layer: int) -> None:
    model = adapted(method, "t5")
    wrapped = {name for name, m in model.named_modules() if isinstance(m, AdaptedProjection)}
    assert len(wrapped) == per_layer * 6  # 3 encoder + 3 decoder layers
    assert not any("EncDecAttention" in name for name in wrapped)
    for layer in iter_layers(model):
        if layer.stack.name == "decoder":
            cross = model.get_submodule(layer.site("cross_attention_output"))
            assert type(cross) is nn.Linear and not cross.weight.requires_grad
    expected_site = {"pfeiffer": "SelfAttention.o", "compacter++": "DenseReluDense.wo"}.get(method)
    if expected_site:
        assert all(name.endswith(expected_site) for name in wrapped)


def test_cross_attention_gets_no_gradient_and_is_unchanged_by_training_the_adapters() -> None:
    model = adapted("adapter", "t5")
    cross = {n: p.clone() for n, p in model.named_parameters() if "EncDecAttention" in n}
    perturb_trainable(model)
    loss_of(model, "t5", tiny_inputs("t5")).backward()
    for name, p in model.named_parameters():
        if "EncDecAttention" in name:
            assert p.grad is None and torch.equal(p, cross[name])


def test_pfeiffer_position_is_a_parameter() -> None:
    after_ffn = adapted("pfeiffer", "bert", placement="ffn")
    wrapped = [n for n, m in after_ffn.named_modules() if isinstance(m, AdaptedProjection)]
    assert len(wrapped) == 3 and all(n.endswith("output.dense") and "attention" not in n for n in wrapped)


def test_adapterdrop_leaves_the_first_layers_alone() -> None:
    model = adapted("adapterdrop", "t5", drop_first=2)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdaptedProjection)]
    assert sorted({n.split(".block.")[1].split(".")[0] for n in wrapped}) == ["2"]
    assert len(wrapped) == 4  # layer 2 of encoder and decoder, attention and FFN


def test_every_layernorm_of_the_backbone_is_trained() -> None:
    model = adapted("compacter", "bert")
    norms = [n for n, m in model.named_modules() if type(m).__name__ == "LayerNorm"]
    assert len(norms) == 1 + 2 * 3  # embeddings + two per layer
    trained = set(model.pelt_state.unfrozen)
    assert all(f"{n}.weight" in trained and f"{n}.bias" in trained for n in norms)
    assert not adapted("compacter", "bert", train_layernorm=False).pelt_state.unfrozen


def test_compacter_shares_one_rule_that_every_adapter_feeds_gradient_to() -> None:
    model = adapted("compacter", "bert")
    layers = [m for m in model.modules() if isinstance(m, PHMLinear)]
    assert len(layers) == 2 * 2 * 3  # down and up, two adapters per layer, three layers
    shared = layers[0].rule()
    assert all(layer.rule() is shared for layer in layers)
    rule_names = [n for n, p in model.named_parameters() if p is shared]
    assert rule_names == ["bert.phm_shared_rule.phm_rule"]  # registered once, in the backbone
    assert rule_names[0] in model.pelt_state.added
    assert [k for k in model.state_dict() if k.endswith("phm_rule")] == rule_names
    perturb_trainable(model)

    # Route each layer's use of the rule through its own copy to see each contribution.
    copies = []
    for layer in layers:
        copy = shared * 1.0
        copy.retain_grad()
        copies.append(copy)
        layer.rule = lambda copy=copy: copy
    loss_of(model, "bert", tiny_inputs("bert")).backward()
    contributions = [c.grad for c in copies]
    assert all(g is not None and g.abs().sum() > 0 for g in contributions)
    torch.testing.assert_close(shared.grad, torch.stack(contributions).sum(0))


def test_phm_adapter_has_its_own_rule_per_projection() -> None:
    model = adapted("phm-adapter", "bert")
    rules = [m.rule() for m in model.modules() if isinstance(m, PHMLinear)]
    assert len({id(r) for r in rules}) == len(rules) == 12


def test_shared_rule_round_trip_keeps_it_shared(tmp_path: Path) -> None:
    model = adapted("compacter", "t5")
    perturb_trainable(model)
    inputs = tiny_inputs("t5")
    expected = model_output(model, inputs)
    pelt.save_adapter(model, tmp_path / "a")
    fresh = pelt.load_adapter(tiny_model("t5"), tmp_path / "a")
    assert torch.equal(model_output(fresh, inputs), expected)
    rules = [m.rule() for m in fresh.modules() if isinstance(m, PHMLinear)]
    assert all(r is rules[0] for r in rules)
    assert fresh.get_parameter("phm_shared_rule.phm_rule") is rules[0]


def test_compacter_model_saves_with_transformers_and_moves_as_one(tmp_path: Path) -> None:
    """save_pretrained refuses state dicts with one tensor under several names: the rule is there once."""
    model = adapted("compacter", "bert")
    model.save_pretrained(tmp_path / "hf")
    model.to(torch.float64)
    rules = {id(m.rule()) for m in model.modules() if isinstance(m, PHMLinear)}
    assert len(rules) == 1 and next(m for m in model.modules() if isinstance(m, PHMLinear)).rule().dtype == torch.float64


def test_adapters_follow_each_projection_dtype() -> None:
    """T5 keeps its FFN output projection in fp32 when the rest runs in bf16: each adapter follows its own."""
    model = tiny_model("t5").to(torch.bfloat16)
    for name, module in model.named_modules():
        if name.endswith("DenseReluDense.wo"):
            module.float()
    pelt.apply_method(model, make_config("compacter", bottleneck=8))
    for module in model.modules():
        if isinstance(module, AdaptedProjection):
            dtypes = {p.dtype for p in module.adapter.parameters()}
            assert dtypes == {module.base_layer.weight.dtype}
    loss_of(model, "t5", tiny_inputs("t5")).backward()


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_factored_path_inside_a_model_matches_materialized(family: str) -> None:
    inputs = tiny_inputs(family)
    outputs = []
    for path in ("materialized", "factored"):
        model = adapted("compacter", family, phm_path=path)
        perturb_trainable(model)
        outputs.append(model_output(model, inputs))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5


def test_lowrank_projection_weight_has_the_requested_rank() -> None:
    model = adapted("adapter-lowrank", "bert", rank=2)
    down = next(m for m in model.modules() if isinstance(m, BottleneckAdapter)).down
    perturb_trainable(model)
    assert torch.linalg.matrix_rank(down.left @ down.right).item() == 2
