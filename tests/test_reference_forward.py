"""Every method's forward against the paper's formula, computed here independently.

Each method is applied to a tiny model of every family, its parameters are moved away from their init, and the
adapted model's logits are compared with those of the *plain* base model (same seed) with the formula applied at
the sites named here, from the trained tensors read by name (../shared/docs/methods.md):

- Hadamard: `W ⊙ A + b` at each self-attention output projection's output;
- LoRA: `y + (alpha / r) · B A x` at query and value (A: r × in, B: out × r);
- (IA)³: keys and values scaled, and the FFN's inner activations (the input of its output projection);
- bottleneck adapters: `h + U f(D h)` at the sublayer outputs the placement names (attention output, FFN
  output; in T5 decoders never cross-attention), with D and U rebuilt: dense; low rank `L R`; PHM
  `Σ_i A_i ⊗ B_i`; LPHM with `B_i = s_i t_iᵀ` and Compacter's one shared set of A_i; f = GeLU (tanh form);
- BitFit: biases (T5's new ones added at every linear layer and LayerNorm); full fine-tuning: every weight;
- prompt tuning: the prompt's vectors inserted into the word embeddings (after [CLS] on encoders, first on T5),
  the attention mask widened by ones.

Intrinsic-SAID: every backbone tensor moved by λ_i · P_i(z), linear in z, one λ per tensor (the Fastfood
projection itself is checked in tests/test_baselines.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ALL_FAMILIES, TINY_OPTIONS, model_output, perturb_trainable, tiny_inputs, tiny_model

import pelt
from pelt.methods import make_config

PREFIX = {"bert": "bert", "roberta": "roberta", "electra": "electra", "deberta-v2": "deberta"}
LAYERS = 3  # per stack, in the tiny models


def projections(family: str) -> dict[str, str]:
    if family == "deberta-v2":
        return {"query": "attention.self.query_proj", "key": "attention.self.key_proj",
                "value": "attention.self.value_proj"}
    return {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value"}


def layers(family: str) -> list[dict[str, str]]:
    """Each layer's sites by role, as full module paths (T5: encoder layers, then decoder layers)."""
    if family == "t5":
        found = []
        for stack, ffn in (("encoder", "layer.1"), ("decoder", "layer.2")):
            for i in range(LAYERS):
                base = f"{stack}.block.{i}"
                found.append({"query": f"{base}.layer.0.SelfAttention.q", "key": f"{base}.layer.0.SelfAttention.k",
                              "value": f"{base}.layer.0.SelfAttention.v",
                              "attention_output": f"{base}.layer.0.SelfAttention.o",
                              "ffn_output": f"{base}.{ffn}.DenseReluDense.wo", "index": str(i)})
        return found
    found = []
    for i in range(LAYERS):
        base = f"{PREFIX[family]}.encoder.layer.{i}"
        sites = {role: f"{base}.{path}" for role, path in projections(family).items()}
        found.append({**sites, "attention_output": f"{base}.attention.output.dense",
                      "ffn_output": f"{base}.output.dense", "index": str(i)})
    return found


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def adapted_and_reference(method: str, family: str, **options):
    """The adapted model (moved off its init), a plain base model of the same seed holding the same trained
    values of existing parameters (unfrozen weights, the head), and the trained tensors by name."""
    config = make_config(method, **{**TINY_OPTIONS.get(method, {}), **options})
    model = pelt.apply_method(tiny_model(family), config)
    perturb_trainable(model, seed=5)
    trained = {n: model.get_parameter(n).detach().clone() for n in model.pelt_state.trainable}
    reference = tiny_model(family)
    existing = dict(reference.named_parameters())
    with torch.no_grad():
        for name, tensor in trained.items():
            if name in existing:
                existing[name].copy_(tensor)
    return model, reference, trained, config


def on_output(module: torch.nn.Module, change) -> None:
    module.register_forward_hook(lambda m, args, output: change(output, args[0]))


def assert_same_logits(model, reference, family: str, inputs=None, reference_inputs=None, what: str = "") -> None:
    inputs = inputs or tiny_inputs(family)
    got = model_output(model, inputs)
    expected = model_output(reference, reference_inputs or inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), \
        f"{what}: the adapted model differs from the formula by {(got - expected).abs().max():.3g}"


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("placement", ["output", "input"])
def test_hadamard_is_w_times_a_plus_b_at_the_attention_output(family: str, placement: str) -> None:
    model, reference, trained, _ = adapted_and_reference("hadamard", family, placement=placement)
    for layer in layers(family):
        site = layer["attention_output"]
        w, b = trained[f"{site}.hadamard_weight"], trained[f"{site}.hadamard_bias"]
        module = reference.get_submodule(site)
        if placement == "output":  # on A, the projection's output
            on_output(module, lambda out, x, w=w, b=b: w * out + b)
        else:  # on the concatenated heads, before the projection
            module.register_forward_pre_hook(lambda m, args, w=w, b=b: (w * args[0] + b,))
    assert_same_logits(model, reference, family, what=f"hadamard ({placement})")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_lora_adds_alpha_over_r_times_b_a_x_at_query_and_value(family: str) -> None:
    rank, alpha = 4, 12.0
    model, reference, trained, _ = adapted_and_reference("lora", family, rank=rank, alpha=alpha)
    sites = [layer[role] for layer in layers(family) for role in ("query", "value")]
    assert {n.rpartition(".")[0] for n in trained if "lora" in n} == set(sites)
    for site in sites:
        a, b = trained[f"{site}.lora_A"], trained[f"{site}.lora_B"]
        module = reference.get_submodule(site)
        assert a.shape == (rank, module.in_features) and b.shape == (module.out_features, rank)
        on_output(module, lambda out, x, a=a, b=b: out + (alpha / rank) * (x @ a.T @ b.T))
    assert_same_logits(model, reference, family, what="lora")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_ia3_scales_keys_values_and_the_ffn_inner_activations(family: str) -> None:
    model, reference, trained, _ = adapted_and_reference("ia3", family)
    scaled = set()
    for layer in layers(family):
        for role in ("key", "value"):
            scale = trained[f"{layer[role]}.ia3_scale"]
            on_output(reference.get_submodule(layer[role]), lambda out, x, s=scale: out * s)
            scaled.add(f"{layer[role]}.ia3_scale")
        inner = trained[f"{layer['ffn_output']}.ia3_scale"]  # on the FFN output projection's input
        reference.get_submodule(layer["ffn_output"]).register_forward_pre_hook(
            lambda m, args, s=inner: (args[0] * s,))
        scaled.add(f"{layer['ffn_output']}.ia3_scale")
    assert {n for n in trained if n.endswith("ia3_scale")} == scaled
    assert_same_logits(model, reference, family, what="ia3")


def dense(trained: dict[str, torch.Tensor], prefix: str, shared_rule: torch.Tensor | None) -> torch.Tensor:
    """D or U as a dense (out, in) matrix, from the tensors the method trains for it."""
    if f"{prefix}.weight" in trained:
        return trained[f"{prefix}.weight"]
    if f"{prefix}.left" in trained:
        return trained[f"{prefix}.left"] @ trained[f"{prefix}.right"]
    rule = trained.get(f"{prefix}.phm_rule", shared_rule)
    if f"{prefix}.phm_weight" in trained:
        blocks = trained[f"{prefix}.phm_weight"]
    else:
        blocks = trained[f"{prefix}.phm_left"] @ trained[f"{prefix}.phm_right"].transpose(1, 2)  # s_i t_iᵀ
    return sum(torch.kron(rule[i], blocks[i]) for i in range(rule.shape[0]))


BOTTLENECK_SITES = {  # method -> the roles it adapts, and the first layer index adapted per stack
    "adapter": (("attention_output", "ffn_output"), 0),
    "adapter-lowrank": (("attention_output", "ffn_output"), 0),
    "phm-adapter": (("attention_output", "ffn_output"), 0),
    "compacter": (("attention_output", "ffn_output"), 0),
    "adapterdrop": (("attention_output", "ffn_output"), 1),  # drop_first=1 in the tiny options
    "pfeiffer": (("attention_output",), 0),
    "compacter++": (("ffn_output",), 0),
}


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("method", sorted(BOTTLENECK_SITES))
def test_bottleneck_adapters_add_u_f_d_h_at_their_sublayers(method: str, family: str) -> None:
    model, reference, trained, config = adapted_and_reference(method, family)
    roles, first = BOTTLENECK_SITES[method]
    sites = [layer[role] for layer in layers(family) if int(layer["index"]) >= first for role in roles]
    assert {n.split(".adapter.")[0] for n in trained if ".adapter." in n} == set(sites), "placement"
    shared = [t for n, t in trained.items() if n.endswith("phm_rule") and ".adapter." not in n]
    assert len(shared) == (1 if method.startswith("compacter") else 0)
    for site in sites:
        down = dense(trained, f"{site}.adapter.down", shared[0] if shared else None)
        up = dense(trained, f"{site}.adapter.up", shared[0] if shared else None)
        b_down, b_up = trained[f"{site}.adapter.down.bias"], trained[f"{site}.adapter.up.bias"]
        assert down.shape == (config.bottleneck, up.shape[0]) and up.shape[1] == config.bottleneck
        on_output(reference.get_submodule(site),
                  lambda h, x, d=down, u=up, bd=b_down, bu=b_up: h + gelu_tanh(h @ d.T + bd) @ u.T + bu)
    assert_same_logits(model, reference, family, what=method)


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("phm_path", ["factored", "materialized"])
@pytest.mark.parametrize("method", ["phm-adapter", "compacter", "compacter++"])
def test_both_phm_paths_compute_the_formula(method: str, phm_path: str, family: str) -> None:
    """The factored product (chosen on larger shapes) and the materialized matrix, each against Σ A_i ⊗ B_i."""
    model, reference, trained, config = adapted_and_reference(method, family, phm_path=phm_path)
    roles, first = BOTTLENECK_SITES[method]
    shared = [t for n, t in trained.items() if n.endswith("phm_rule") and ".adapter." not in n]
    for site in (layer[role] for layer in layers(family) for role in roles):
        down = dense(trained, f"{site}.adapter.down", shared[0] if shared else None)
        up = dense(trained, f"{site}.adapter.up", shared[0] if shared else None)
        b_down, b_up = trained[f"{site}.adapter.down.bias"], trained[f"{site}.adapter.up.bias"]
        on_output(reference.get_submodule(site),
                  lambda h, x, d=down, u=up, bd=b_down, bu=b_up: h + gelu_tanh(h @ d.T + bd) @ u.T + bu)
    assert_same_logits(model, reference, family, what=f"{method} ({phm_path})")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_bitfit_trains_biases_only(family: str) -> None:
    model, reference, trained, _ = adapted_and_reference("bitfit", family)
    existing = dict(reference.named_parameters())
    head = {n for n in trained if n.split(".")[0] not in ("encoder", "decoder", PREFIX.get(family, "-"))}
    assert all(n.endswith(".bias") for n in set(trained) - head)
    for name, bias in trained.items():
        if name not in existing:  # T5 has no biases: added at its linear layers and LayerNorms, zero at init
            on_output(reference.get_submodule(name.rpartition(".")[0]), lambda out, x, b=bias: out + b)
    assert_same_logits(model, reference, family, what="bitfit")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_full_fine_tuning_is_the_model_with_its_trained_weights(family: str) -> None:
    model, reference, trained, _ = adapted_and_reference("full", family)
    assert set(trained) == {n for n, _ in reference.named_parameters()}
    assert_same_logits(model, reference, family, what="full")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_prompt_tuning_inserts_its_vectors_into_the_word_embeddings(family: str) -> None:
    model, reference, trained, config = adapted_and_reference("prompt-tuning", family)
    (name,) = [n for n in trained if n.endswith("prompt_tuning.weight")]
    prompt = trained[name]
    assert prompt.shape == (config.num_tokens, reference.get_input_embeddings().embedding_dim)
    inputs = tiny_inputs(family)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    words = reference.get_input_embeddings()(ids)
    at = 0 if family == "t5" else 1  # after [CLS] on encoders
    batch, p = ids.shape[0], config.num_tokens
    embeds = torch.cat([words[:, :at], prompt.expand(batch, -1, -1), words[:, at:]], dim=1)
    widened = torch.cat([mask[:, :at], torch.ones(batch, p, dtype=mask.dtype), mask[:, at:]], dim=1)
    reference_inputs = {"inputs_embeds": embeds, "attention_mask": widened}
    if family == "t5":
        reference_inputs["decoder_input_ids"] = inputs["decoder_input_ids"]
    assert_same_logits(model, reference, family, inputs=inputs, reference_inputs=reference_inputs,
                       what="prompt-tuning")


def layer_norms(family: str, attention_only: bool = False) -> set[str]:
    """The LayerNorms' parameters, spelled out (T5's have no bias)."""
    if family == "t5":
        names = set()
        for stack, count in (("encoder", 2), ("decoder", 3)):
            for i in range(LAYERS):
                parts = [0] if attention_only else range(count)
                names |= {f"{stack}.block.{i}.layer.{j}.layer_norm.weight" for j in parts}
            if not attention_only:
                names.add(f"{stack}.final_layer_norm.weight")
        return names
    prefix = PREFIX[family]
    names = {f"{prefix}.encoder.layer.{i}.attention.output.LayerNorm.{w}" for i in range(LAYERS) for w in ("weight", "bias")}
    if not attention_only:
        names |= {f"{prefix}.encoder.layer.{i}.output.LayerNorm.{w}" for i in range(LAYERS) for w in ("weight", "bias")}
        names |= {f"{prefix}.embeddings.LayerNorm.{w}" for w in ("weight", "bias")}
    return names  # (the tiny DeBERTa has no relative attention, so no LayerNorm of relative embeddings)


def head(family: str) -> set[str]:
    if family == "t5":
        return set()  # the LM head is tied to the embeddings and stays frozen
    return {"bert": {"classifier.weight", "classifier.bias"},
            "deberta-v2": {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}}.get(
        family, {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                 "classifier.out_proj.bias"})  # RoBERTa and ELECTRA: a two-layer head


def expected_trained(method: str, family: str) -> set[str]:
    sites = layers(family)
    if method == "hadamard":
        added = {f"{s['attention_output']}.hadamard_{w}" for s in sites for w in ("weight", "bias")}
        return added | layer_norms(family, attention_only=True) | head(family)
    if method == "lora":
        return {f"{s[r]}.lora_{m}" for s in sites for r in ("query", "value") for m in "AB"} | head(family)
    if method == "ia3":
        return {f"{s[r]}.ia3_scale" for s in sites for r in ("key", "value", "ffn_output")} | head(family)
    if method == "prompt-tuning":
        return {"encoder.prompt_tuning.weight" if family == "t5" else f"{PREFIX[family]}.prompt_tuning.weight"} \
            | head(family)
    roles, first = BOTTLENECK_SITES[method]
    kinds = {"adapter": ("weight", "bias"), "pfeiffer": ("weight", "bias"), "adapterdrop": ("weight", "bias"),
             "adapter-lowrank": ("left", "right", "bias"), "phm-adapter": ("phm_rule", "phm_weight", "bias"),
             "compacter": ("phm_left", "phm_right", "bias"), "compacter++": ("phm_left", "phm_right", "bias")}[method]
    added = {f"{s[r]}.adapter.{p}.{k}" for s in sites if int(s["index"]) >= first for r in roles
             for p in ("down", "up") for k in kinds}
    return added | layer_norms(family) | head(family)


SPELLED_OUT = ["hadamard", "lora", "ia3", "prompt-tuning", *sorted(BOTTLENECK_SITES)]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("method", SPELLED_OUT)
def test_the_trained_set_is_the_one_the_paper_names(method: str, family: str) -> None:
    model = pelt.apply_method(tiny_model(family), make_config(method, **TINY_OPTIONS.get(method, {})))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    shared = {n for n in trained if n.endswith("phm_rule") and ".adapter." not in n}
    assert len(shared) == (1 if method.startswith("compacter") else 0)  # Compacter's one set of A_i
    expected = expected_trained(method, family)
    assert trained - shared == expected, (f"trains too much: {sorted(trained - shared - expected)[:4]}; "
                                          f"misses: {sorted(expected - trained)[:4]}")


def _effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parametrized tensor as the model reads it (θ⁰ + its delta)."""
    import torch.nn.utils.parametrize as parametrize

    weights = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                weights[f"{path}.{name}"] = getattr(module, name).detach().clone()
    return weights


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_intrinsic_said_moves_every_tensor_by_its_scale_times_a_linear_projection(family: str) -> None:
    """θ_i = θ_i⁰ + λ_i · P_i(z): the tensors moved are the backbone's (the pooler and head apart), each move is
    linear in z and proportional to that tensor's λ_i alone."""
    model = pelt.apply_method(tiny_model(family), make_config("intrinsic-said", **TINY_OPTIONS["intrinsic-said"]))
    base = {n: p.detach() for n, p in tiny_model(family).named_parameters()}
    z_name, scales_name = sorted(model.pelt_state.added)  # ...intrinsic, ...scales
    z, scales = model.get_parameter(z_name), model.get_parameter(scales_name)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}  # T5's shared.weight
    at_zero = {n: w for n, w in _effective_weights(model).items() if n not in tied}
    backbone = {n for n in base if not n.startswith(("classifier.", "bert.pooler."))}
    assert set(at_zero) == backbone
    assert len(at_zero) == scales.numel()  # one λ per projected tensor
    assert all(torch.equal(at_zero[n], base[n]) for n in at_zero)  # z = 0: the base model
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(z.shape, generator=g), torch.randn(z.shape, generator=g)
    lam = torch.rand(scales.shape, generator=g) + 0.5

    def moves(vector: torch.Tensor, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            z.copy_(vector)
            scales.copy_(factors)
        return {n: w - at_zero[n] for n, w in _effective_weights(model).items() if n in at_zero}

    one, two, both = moves(z1, lam), moves(z2, lam), moves(z1 + z2, lam)
    doubled = moves(2 * z1, lam)
    for name in one:
        torch.testing.assert_close(both[name], one[name] + two[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(doubled[name], 2 * one[name], atol=1e-5, rtol=1e-4)
    assert all(one[n].abs().sum() > 0 for n in one), "a projected tensor did not move"
    j = scales.numel() // 2  # tensor j's scale doubled, the others' unchanged
    changed = lam.clone()
    changed[j] *= 2
    again = moves(z1, changed)
    moved = [n for n in one if not torch.allclose(again[n], one[n], atol=1e-7)]
    assert len(moved) == 1
    torch.testing.assert_close(again[moved[0]], 2 * one[moved[0]], atol=1e-5, rtol=1e-4)
