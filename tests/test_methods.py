"""One suite over every registered method × every supported family.

A method added to the registry is tested here with no new test code: init equivalence (where it applies),
gradients only on the declared set, save → load round trip with the head, merge equivalence (if mergeable).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    ALL_FAMILIES,
    TINY_OPTIONS,
    loss_of,
    model_output,
    perturb_trainable,
    tiny_inputs,
    tiny_model,
)

import pelt
from pelt.arch import head_module_names
from pelt.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from pelt.methods import METHODS, get_method, make_config

METHOD_NAMES = sorted(METHODS)
CASES = [(m, f) for m in METHOD_NAMES for f in ALL_FAMILIES]
# Methods whose injected modules leave the model's outputs unchanged at init (full FT trivially so); the
# bottleneck family starts near them (tests/test_init.py), prompt tuning adds its tokens from the start.
EXACT_AT_INIT = [(m, f) for m, f in CASES if get_method(m).init_output == "exact"]


def test_the_methods_that_start_exactly_at_the_base_model() -> None:
    """Written out, so that a method that stopped starting at the base model cannot just change its declaration."""
    exact = {m for m in METHOD_NAMES if get_method(m).init_output == "exact"}
    assert exact == {"hadamard", "full", "lora", "ia3", "bitfit", "intrinsic-said"}
    assert {m for m in METHOD_NAMES if get_method(m).init_output == "changed"} == {"prompt-tuning"}
# What fits the tiny models (hidden size 32, 3 layers per stack): the default bottleneck would be 32/32 = 1.


def adapted(method: str, family: str, seed: int = 0, **options) -> torch.nn.Module:
    model = tiny_model(family, seed)
    return pelt.apply_method(model, make_config(method, **{**TINY_OPTIONS.get(method, {}), **options}))


@pytest.mark.parametrize("method,family", EXACT_AT_INIT)
def test_init_equals_base_model_exactly(method: str, family: str) -> None:
    inputs = tiny_inputs(family)
    before = model_output(tiny_model(family), inputs)
    after = model_output(adapted(method, family), inputs)
    assert torch.equal(before, after)


@pytest.mark.parametrize("method,family", CASES)
def test_gradients_reach_only_the_trainable_set(method: str, family: str) -> None:
    model = adapted(method, family)
    perturb_trainable(model)  # away from init, so every trained parameter gets a non-zero gradient
    model.train()
    loss_of(model, family, tiny_inputs(family)).backward()
    trainable = set(model.pelt_state.trainable)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    nonzero = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert nonzero == trainable


@pytest.mark.parametrize("method,family", CASES)
def test_save_load_round_trip_restores_outputs_and_head(method: str, family: str, tmp_path: Path) -> None:
    model = adapted(method, family)
    perturb_trainable(model)
    inputs = tiny_inputs(family)
    expected = model_output(model, inputs)
    pelt.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    fresh = tiny_model(family)  # same seed: the same base weights, a freshly initialised head
    assert not torch.equal(model_output(fresh, inputs), expected)
    pelt.load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(model_output(fresh, inputs), expected)
    for head in head_module_names(fresh):
        for (name, a), (_, b) in zip(fresh.get_submodule(head).named_parameters(),
                                     model.get_submodule(head).named_parameters()):
            assert torch.equal(a, b), f"head parameter {head}.{name} not restored"


@pytest.mark.parametrize("method,family", CASES)
def test_adapter_file_holds_only_what_was_trained(method: str, family: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from test_reference_forward import SPELLED_OUT, expected_trained

    model = adapted(method, family)
    pelt.save_adapter(model, tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    if method in SPELLED_OUT:  # the names the paper's method trains, written out in that test module
        shared = {n for n in saved if n.endswith("phm_rule") and ".adapter." not in n}
        assert set(saved) - shared == expected_trained(method, family)
    elif method == "full":
        assert set(saved) == {n for n, _ in tiny_model(family).named_parameters()}
    elif method == "bitfit":
        assert all(n.endswith(".bias") or n.startswith("classifier.") or n.startswith("pooler.") for n in saved)
    # every tensor whole, and nothing else in the file: what requires a gradient is what is saved
    assert {n: tuple(t.shape) for n, t in saved.items()} == \
        {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


# Every variant of a mergeable method whose merge arithmetic differs, as the method declares them.
MERGEABLE = [(m, f, v) for m, f in CASES if get_method(m).mergeable for v in get_method(m).merge_variants]


def test_every_merge_arithmetic_is_covered() -> None:
    """Hadamard folds into W_o's rows (output) or columns (input); LoRA into any projection it targets."""
    assert {m for m in METHOD_NAMES if get_method(m).mergeable} == {"hadamard", "lora", "ia3", "intrinsic-said"}
    assert [v.get("placement") for v in get_method("hadamard").merge_variants] == ["output", "input"]
    assert set(get_method("lora").merge_variants[0]["targets"]) >= {"query", "value", "ffn_input", "ffn_output"}


@pytest.mark.parametrize("method,family,options", MERGEABLE)
def test_merge_matches_unmerged_and_unmerge_restores(method: str, family: str, options: dict) -> None:
    model = adapted(method, family, **options)
    perturb_trainable(model)
    inputs = tiny_inputs(family)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = model_output(model, inputs)

    pelt.merge(model)
    merged = model_output(model, inputs)
    assert (merged - unmerged).abs().max() < 1e-5
    changed = [n for n, p in model.named_parameters() if n in base_weights and not torch.equal(p, base_weights[n])]
    assert changed, "merge changed no base weight"

    pelt.unmerge(model)
    assert set(dict(model.named_parameters())) == set(base_weights)  # a bias added by merge is gone again
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, base_weights[name], atol=1e-6, rtol=1e-5)
    assert (model_output(model, inputs) - unmerged).abs().max() < 1e-5


def test_saving_a_merged_model_is_refused(tmp_path: Path) -> None:
    model = adapted("hadamard", "bert")
    pelt.merge(model)
    with pytest.raises(pelt.PeltError, match="unmerge"):
        pelt.save_adapter(model, tmp_path)
