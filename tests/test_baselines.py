"""The remaining Compacter-paper baselines: BitFit, prompt tuning, Intrinsic-SAID (and its Fastfood transform).

The suite in test_methods.py runs each of them through identity at init (BitFit, Intrinsic-SAID), gradients,
save/load and merge on every family; this file checks what is specific to each.
"""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, loss_of, model_output, perturb_trainable, tiny_inputs, tiny_model

import pelt
from pelt.cli import main
from pelt.errors import PeltError
from pelt.methods import make_config
from pelt.methods.fastfood import FastfoodBank, FastfoodProjection, fwht, hadamard_matrix
from pelt.methods.intrinsic_said import IntrinsicSubspace
from pelt.methods.prompt import PromptEmbedding
from pelt.pipeline import count_parameters_for

T5_BASE = 222_903_552

# ---- parameter counts on T5-base (methods.md's table) ---------------------------------------------------------


@pytest.mark.parametrize("method,options,count,percent", [
    ("prompt-tuning", {"num_tokens": 100}, 76_800, "0.0345"),
    # 20,000 + one λ for each of T5-base's 257 tensors outside the (tied) LM head
    ("intrinsic-said", {"dim": 20_000}, 20_257, "0.0091"),
    # biases on q,k,v,o of 36 attentions (4 × 768 × 36) + wi (3072 × 24) + wo (768 × 24) + the 60 in-layer
    # LayerNorms (768 × 60) + the LM head (32,128): the paper's 0.126%
    ("bitfit", {}, 280_960, "0.1260"),
    ("bitfit", {"final_norms": True}, 282_496, "0.1267"),  # + the two final LayerNorms
])
def test_t5_base_counts(method: str, options: dict, count: int, percent: str) -> None:
    report = count_parameters_for("t5-base", make_config(method, **options))
    assert report.base_params == T5_BASE
    assert report.method_total == count
    assert f"{report.percent(count):.4f}" == percent


def test_params_command_prints_the_prompt_tuning_count(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model", "t5-base", "--method", "prompt-tuning"]) == 0
    out = capsys.readouterr().out
    assert "76,800" in out and "0.0345%" in out


# ---- the fast Walsh–Hadamard transform and Fastfood ------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 4, 32, 64, 128, 1024, 4096])
def test_fwht_equals_the_explicit_hadamard_matrix(size: int) -> None:
    x = torch.randn(3, size, dtype=torch.float64)
    matrix = hadamard_matrix(size, torch.float64)
    torch.testing.assert_close(fwht(x), x @ matrix, rtol=0, atol=1e-9)
    assert torch.equal(matrix, matrix.T) and torch.equal(matrix @ matrix, size * torch.eye(size, dtype=torch.float64))


@pytest.mark.parametrize("size", [8, 512, 2**15])
def test_fwht_is_its_own_inverse_up_to_scale(size: int) -> None:
    x = torch.randn(2, size, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)) / size, x, rtol=0, atol=1e-9)


def test_fwht_gradient_is_the_transform_of_the_gradient() -> None:
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(64, dtype=torch.float64)
    (fwht(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, hadamard_matrix(64, torch.float64) @ weights)


def test_fwht_rejects_sizes_that_are_not_powers_of_two() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(24))


@pytest.mark.parametrize("d,D", [(20, 100), (33, 1000), (7, 7), (100, 20)])
def test_fastfood_is_a_fixed_linear_map_regenerated_from_its_seed(d: int, D: int) -> None:
    projection = FastfoodProjection(d, D, seed=5)
    dense = projection.dense()
    assert dense.shape == (D, d)
    z = torch.randn(d)
    torch.testing.assert_close(projection(z), dense @ z, rtol=0, atol=1e-5)
    torch.testing.assert_close(FastfoodProjection(d, D, seed=5).dense(), dense)  # same seed, same P
    assert not torch.allclose(FastfoodProjection(d, D, seed=6).dense(), dense)
    reached = min(d, 1 << (D - 1).bit_length())  # a small output sees only the first coordinates (Li et al.)
    norms = dense.norm(dim=0)
    assert torch.allclose(norms[:reached].mean(), torch.tensor(1.0), atol=0.1)  # columns about unit length
    assert torch.all(norms[reached:] == 0)


def test_fastfood_gradient_is_the_transposed_projection() -> None:
    projection = FastfoodProjection(30, 200, seed=1)
    z = torch.zeros(30, requires_grad=True)
    upstream = torch.randn(200)
    (projection(z) * upstream).sum().backward()
    torch.testing.assert_close(z.grad, projection.dense().T @ upstream, rtol=0, atol=1e-5)


def test_fastfood_bank_equals_its_projections_one_by_one() -> None:
    sizes, seeds = [10, 100, 3000, 100, 64, 1], [1, 2, 3, 4, 5, 6]
    bank = FastfoodBank(50, sizes, seeds)
    assert sorted(bank.groups) == [1, 16, 64, 128, 4096]  # 100 and 100 share one batched transform
    z, multipliers = torch.randn(50), torch.tensor([1.0, 2.0, -3.0, 0.5, 5.0, 7.0])
    for out, size, seed, m in zip(bank(z, multipliers), sizes, seeds, multipliers):
        torch.testing.assert_close(out, m * FastfoodProjection(50, size, seed)(z), rtol=0, atol=1e-5)


def test_fastfood_stores_vectors_not_a_dense_matrix() -> None:
    d, D = 20_000, 3_000_000
    bank = FastfoodBank(d, [D], [0])
    bank(torch.zeros(d))
    stored = sum(t.numel() for t in bank._stacked[4_194_304])
    assert stored < 3 * 4_194_304  # signs, Π, G and a scale: O(N), against D × d' = 6·10^10 for a dense P


# ---- Intrinsic-SAID ----------------------------------------------------------------------------------------------


def _subspace(model: torch.nn.Module) -> IntrinsicSubspace:
    return next(m for m in model.modules() if isinstance(m, IntrinsicSubspace))


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_said_projects_every_backbone_tensor_and_moves_the_model(family: str) -> None:
    model = pelt.apply_method(tiny_model(family), make_config("intrinsic-said", dim=64))
    subspace = _subspace(model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(subspace.shapes) == sum(1 for n in frozen if n.endswith(".original"))
    assert all("classifier" not in n and "pooler" not in n for n in frozen if n.endswith(".original"))
    inputs = tiny_inputs(family)
    before = model_output(model, inputs)
    with torch.no_grad():
        subspace.intrinsic.normal_()
    assert not torch.allclose(model_output(model, inputs), before)  # the no-grad cache saw z change
    with torch.no_grad():
        subspace.scales.zero_()  # λ = 0 switches every delta off
    torch.testing.assert_close(model_output(model, inputs), before, rtol=0, atol=0)


def test_said_computes_the_projections_once_per_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("intrinsic-said", dim=64))
    subspace = _subspace(model)
    calls = []
    original = type(subspace.bank).__call__
    monkeypatch.setattr(type(subspace.bank), "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    model.train()
    loss_of(model, "t5", tiny_inputs("t5")).backward()  # T5 reads its FFN output weights several times per call
    assert len(calls) == 1
    model.eval()
    model_output(model, tiny_inputs("t5"))
    model_output(model, tiny_inputs("t5"))  # no gradients and z unchanged: reused
    assert len(calls) == 2


def test_said_regenerates_the_same_projection_from_the_saved_seed(tmp_path) -> None:
    model = pelt.apply_method(tiny_model("bert"), make_config("intrinsic-said", dim=32, projection_seed=7))
    perturb_trainable(model)
    pelt.save_adapter(model, tmp_path / "a")
    other_seed = pelt.apply_method(tiny_model("bert"), make_config("intrinsic-said", dim=32, projection_seed=8))
    with torch.no_grad():
        _subspace(other_seed).intrinsic.copy_(_subspace(model).intrinsic)
        _subspace(other_seed).scales.copy_(_subspace(model).scales)
    inputs = tiny_inputs("bert")
    reloaded = pelt.load_adapter(tiny_model("bert"), tmp_path / "a")
    base = model_output(tiny_model("bert"), inputs)
    # same seed: the same model; another seed with the same z: another model
    torch.testing.assert_close(model_output(reloaded, inputs), model_output(model, inputs), rtol=0, atol=0)
    assert not torch.allclose(model_output(other_seed, inputs) - base, model_output(model, inputs) - base)


def test_said_rejects_impossible_options() -> None:
    with pytest.raises(PeltError, match="dim must be at least 1"):
        make_config("intrinsic-said", dim=0)
    with pytest.raises(PeltError, match="projection_seed"):
        make_config("intrinsic-said", projection_seed=-1)


# ---- BitFit --------------------------------------------------------------------------------------------------------


def test_bitfit_adds_zero_biases_to_t5_where_the_paper_does() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("bitfit"))
    added = set(model.pelt_state.added)
    assert model.pelt_state.unfrozen == []
    linear = {n for n in added if any(f".{k}.bias" in n for k in ("q", "k", "v", "o", "wi", "wo"))}
    norms = {n for n in added if "layer_norm.bias" in n}
    assert len(linear) == 3 * 6 + 3 * 10  # encoder layers: q,k,v,o,wi,wo; decoder: + cross-attention q,k,v,o
    assert len(norms) == 3 * 2 + 3 * 3 and not any("final_layer_norm" in n for n in added)
    assert added == linear | norms | {"lm_head.bias"}
    with_final = pelt.apply_method(tiny_model("t5"), make_config("bitfit", final_norms=True))
    assert {n for n in with_final.pelt_state.added if "final_layer_norm" in n} == {
        "encoder.final_layer_norm.bias", "decoder.final_layer_norm.bias"}


def test_bitfit_bias_on_a_t5_layernorm_acts_once_trained() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("bitfit"))
    inputs = tiny_inputs("t5")
    before = model_output(model, inputs)
    with torch.no_grad():
        model.get_parameter("encoder.block.0.layer.0.layer_norm.bias").fill_(0.5)
    assert not torch.allclose(model_output(model, inputs), before)


def test_bitfit_on_bert_trains_the_biases_it_has_and_adds_none() -> None:
    model = pelt.apply_method(tiny_model("bert"), make_config("bitfit"))
    state = model.pelt_state
    assert state.added == []
    backbone_biases = {n for n, _ in model.named_parameters() if n.startswith("bert.") and n.endswith(".bias")}
    assert set(state.unfrozen) == backbone_biases
    assert set(state.trainable) == backbone_biases | {"classifier.weight", "classifier.bias"}


def test_bitfit_without_adding_trains_nothing_on_t5() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("bitfit", add_missing=False))
    assert model.pelt_state.trainable == []


# ---- prompt tuning ---------------------------------------------------------------------------------------------------


def _capture_stack_inputs(module: torch.nn.Module) -> dict:
    """Record the arguments the stack receives after the prompt hook rewrote them."""
    seen: dict = {}
    module.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    return seen


def test_prompt_follows_cls_in_an_encoder_and_the_mask_covers_it() -> None:
    model = pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", num_tokens=5))
    seen = _capture_stack_inputs(model.bert)
    inputs = tiny_inputs("bert")
    model_output(model, inputs)
    embeds, mask = seen["inputs_embeds"], seen["attention_mask"]
    assert embeds.shape[1] == 7 + 5 and seen["input_ids"] is None
    word = model.bert.embeddings.word_embeddings
    torch.testing.assert_close(embeds[:, 0], word(inputs["input_ids"][:, 0]))  # the classifier still reads token 0
    torch.testing.assert_close(embeds[:, 1:6], model.bert.prompt_tuning.weight.expand(3, -1, -1))
    assert torch.equal(mask[:, 1:6], torch.ones(3, 5, dtype=mask.dtype))
    assert torch.equal(torch.cat([mask[:, :1], mask[:, 6:]], 1), inputs["attention_mask"])


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2", "t5"])
def test_prompt_output_depends_on_the_prompt_and_ignores_padding(family: str) -> None:
    model = pelt.apply_method(tiny_model(family), make_config("prompt-tuning", num_tokens=4))
    inputs = tiny_inputs(family)
    before = model_output(model, inputs)
    assert not torch.allclose(before, model_output(tiny_model(family), inputs))
    # example 0 is padded by two tokens: without them (and their mask) it must give the same output
    short = {k: v[:1, :-2] if k in ("input_ids", "attention_mask") else v[:1] for k, v in inputs.items()}
    torch.testing.assert_close(model_output(model, short), before[:1], rtol=1e-4, atol=1e-5)
    perturb_trainable(model)
    assert not torch.allclose(model_output(model, inputs), before)


def test_prompt_on_t5_extends_the_cross_attention_mask_and_generates() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("prompt-tuning", num_tokens=3))
    seen = _capture_stack_inputs(model.decoder)
    inputs = tiny_inputs("t5")
    model_output(model, inputs)
    assert seen["encoder_hidden_states"].shape[1] == 7 + 3
    assert torch.equal(seen["encoder_attention_mask"][:, :3], torch.ones(3, 3, dtype=torch.long))
    generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 3


def test_prompt_vocab_init_copies_real_token_embeddings() -> None:
    torch.manual_seed(0)
    model = pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", num_tokens=20, init="vocab"))
    prompt = model.bert.prompt_tuning.weight
    table = model.bert.embeddings.word_embeddings.weight
    rows = [int(torch.nonzero((table == row).all(1))[0]) for row in prompt]
    assert len(set(rows)) == 20 and 0 not in rows  # distinct tokens, never the padding token
    given = pelt.apply_method(tiny_model("bert"),
                              make_config("prompt-tuning", num_tokens=5, init="vocab", init_token_ids=[7, 9]))
    torch.testing.assert_close(given.bert.prompt_tuning.weight, table[[7, 9, 7, 9, 7]])


def test_prompt_random_init_is_uniform_in_range() -> None:
    model = pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", num_tokens=50, init_range=0.2))
    weight = model.bert.prompt_tuning.weight
    assert weight.abs().max() <= 0.2 and weight.std() > 0.05


def test_prompt_tuning_bad_input() -> None:
    with pytest.raises(PeltError, match="num_tokens must be at least 1"):
        make_config("prompt-tuning", num_tokens=0)
    with pytest.raises(PeltError, match="init must be one of"):
        make_config("prompt-tuning", init="zeros")
    with pytest.raises(PeltError, match="needs init=vocab"):
        make_config("prompt-tuning", init_token_ids=[3])
    with pytest.raises(PeltError, match="outside this model's vocabulary"):
        pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", init="vocab", init_token_ids=[len(VOCAB)]))
    with pytest.raises(PeltError, match="leave no room"):  # the tiny BERT has 64 positions
        pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", num_tokens=64))
    model = pelt.apply_method(tiny_model("bert"), make_config("prompt-tuning", num_tokens=60))
    with pytest.raises(PeltError, match=r"7 input tokens \+ 60 prompt tokens exceed .* at most 4"):
        model_output(model, tiny_inputs("bert"))


def test_prompt_tuning_cli_reports_an_impossible_prompt_length(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--method", "prompt-tuning", "--num-tokens", "600"]) == 2
    err = capsys.readouterr().err
    assert "leave no room" in err and "Traceback" not in err


def test_prompt_module_is_the_only_thing_added() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("prompt-tuning", num_tokens=4))
    assert model.pelt_state.added == ["encoder.prompt_tuning.weight"]
    assert isinstance(model.encoder.prompt_tuning, PromptEmbedding)


def test_said_keeps_tied_weights_tied() -> None:
    model = pelt.apply_method(tiny_model("t5"), make_config("intrinsic-said", dim=64))
    perturb_trainable(model)
    with torch.no_grad():
        shared = model.shared.weight
        assert not torch.equal(shared, model.shared.parametrizations.weight.original)
        for tied in (model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, model.lm_head.weight):
            assert torch.equal(tied, shared)
