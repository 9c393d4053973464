"""The Hadamard paper's analyses (`pelt.analysis`, `pelt analyze`): capture hooks, fitting functions, the layer
and module ablations, shared adapters. Tiny models and data from conftest.py."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import pelt  # noqa: E402
from conftest import (  # noqa: E402
    ALL_FAMILIES,
    VOCAB,
    assert_bad_input,
    model_output,
    run,
    separable_rows,
    tiny_inputs,
    tiny_model,
    with_padding,
    write_sst2,
)
from pelt import analysis  # noqa: E402
from pelt.analysis.ablation import PARTS, _ranges  # noqa: E402
from pelt.analysis.capture import encoder_layers  # noqa: E402
from pelt.analysis.fitting import HadamardMap, MappedSublayer, spectrum  # noqa: E402
from pelt.analysis.reference import ReferencePair  # noqa: E402
from pelt.errors import PeltError  # noqa: E402
from pelt.harness import GridSettings  # noqa: E402
from pelt.harness.grid import parse_variant, variant_config  # noqa: E402
from pelt.methods.base import parse_int_list  # noqa: E402

HIDDEN, LAYERS = 32, 3  # conftest.tiny_config


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


# ---- fitting functions ----------------------------------------------------------------------------------------


def synthetic(tokens: int = 500, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, dim, generator=g) * torch.linspace(0.5, 3.0, dim) + torch.linspace(-1, 1, dim)


def test_hadamard_fit_recovers_a_known_map_exactly():
    x = synthetic()
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    fitted = analysis.fit_map("hadamard", x, w * x + b)
    assert torch.allclose(fitted.weight, w, atol=1e-5) and torch.allclose(fitted.bias, b, atol=1e-5)
    errors = analysis.fit_errors(fitted, x, w * x + b)
    assert errors["unexplained_change"] < 1e-10 and errors["r2"] > 1 - 1e-10


def test_scalar_and_linear_fits_recover_their_maps():
    x = synthetic()
    g = torch.Generator().manual_seed(2)
    matrix, b = torch.randn(16, 16, generator=g), torch.randn(16, generator=g)
    linear = analysis.fit_map("linear", x, x @ matrix.T + b)
    assert torch.allclose(linear.weight, matrix, atol=1e-4) and torch.allclose(linear.bias, b, atol=1e-4)
    scalar = analysis.fit_map("scalar", x, 0.7 * x + b)
    assert abs(float(scalar.scale) - 0.7) < 1e-5 and torch.allclose(scalar.bias, b, atol=1e-5)
    bias = analysis.fit_map("bias", x, x + b)
    assert torch.allclose(bias.bias, b, atol=1e-5)


def test_fit_classes_are_nested_by_their_error():
    """On a target no simple class reaches, each richer class explains at least as much as the one it contains."""
    x = synthetic(2000)
    g = torch.Generator().manual_seed(3)
    y = x @ (torch.eye(16) + 0.3 * torch.randn(16, 16, generator=g)).T + torch.tanh(2 * x)
    error = {name: analysis.fit_errors(analysis.fit_map(name, x, y, **({"steps": 300} if name == "mlp" else {})),
                                       x, y)["unexplained_change"] for name in analysis.FIT_FUNCTIONS}
    assert error["identity"] == pytest.approx(1.0)
    assert error["bias"] >= error["hadamard"] - 1e-9 and error["scalar"] >= error["hadamard"] - 1e-9
    assert error["hadamard"] > error["linear"]
    assert error["mlp"] < error["hadamard"]  # the non-linear residual learns something beyond w ⊙ x + b


def test_hadamard_fit_keeps_a_constant_dimension_at_one():
    x = synthetic()
    x[:, 3] = 2.0
    fitted = analysis.fit_map("hadamard", x, x + 1)
    assert float(fitted.weight[3]) == 1.0 and float(fitted.bias[3]) == pytest.approx(1.0)


def test_fit_errors_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    y = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # change ‖y - x‖² = 1 + 0 + 1 + 4 = 6; the identity leaves all of it; spread around ȳ = (2, 2): 1+4+1+4 = 10
    errors = analysis.fit_errors(lambda t: t, x, y)
    assert errors["unexplained_change"] == pytest.approx(1.0)
    assert errors["r2"] == pytest.approx(1 - 6 / 10)
    assert errors["mean_value"] == pytest.approx(1.0)


def test_spectrum_by_hand():
    outputs = torch.tensor([[2.0, 1.0], [-2.0, -1.0], [2.0, -1.0], [-2.0, 1.0]])  # covariance diag(16/3, 4/3)
    result = spectrum(outputs, top=2)
    assert result["top_eigenvalues"] == pytest.approx([16 / 3, 4 / 3])
    assert result["mean_eigenvalue"] == pytest.approx(10 / 3)


@pytest.mark.parametrize("bad", ["cubic", "LINEAR"])
def test_unknown_fit_function(bad):
    with pytest.raises(PeltError, match="unknown fitting function"):
        analysis.fit_map(bad, synthetic(), synthetic())


def test_linear_fit_refuses_too_few_tokens():
    with pytest.raises(PeltError, match="needs at least that many tokens"):
        analysis.fit_map("linear", synthetic(8), synthetic(8, seed=1))


# ---- capture hooks --------------------------------------------------------------------------------------------


def padded_batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, len(VOCAB), (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_capture_returns_one_tensor_per_layer_of_the_unpadded_tokens(family):
    model = tiny_model(family)
    batch = padded_batch(family)
    captured = analysis.capture_sublayer_outputs(model, [batch, batch])
    assert len(captured) == LAYERS
    tokens = 2 * int(batch["attention_mask"].sum())
    assert all(t.shape == (tokens, HIDDEN) and t.dtype == torch.float32 for t in captured)
    # The same values as an independent hook on the attention output projection reads.
    seen = []
    path = encoder_layers(model)[1].site("attention_output")
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.append(o[batch["attention_mask"].bool()]))
    analysis.capture_sublayer_outputs(model, [batch])
    handle.remove()
    assert torch.equal(seen[0], captured[1][: tokens // 2])


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_capture_leaves_the_model_unchanged(family):
    model = tiny_model(family)
    batch = padded_batch(family)
    inputs = dict(batch, decoder_input_ids=batch["input_ids"][:, :2]) if family == "t5" else batch
    with torch.no_grad():
        before = model(**inputs).logits
    # What the encoder returns while the hooks are on equals what it returns with no hooks at all.
    entry = model.get_encoder() if family == "t5" else model.bert
    outputs = []
    handle = entry.register_forward_hook(lambda m, i, o: outputs.append(o[0].clone()))
    analysis.capture_sublayer_outputs(model, [batch])
    handle.remove()
    with torch.no_grad():
        plain = entry(**batch)[0]
        after = model(**inputs).logits
    assert torch.equal(outputs[0], plain)
    assert torch.equal(before, after)
    assert all(not m._forward_hooks for m in model.modules())
    assert not model.training


def test_capture_without_a_mask_takes_every_token():
    batch = {"input_ids": torch.randint(5, len(VOCAB), (2, 6))}
    assert [t.shape for t in analysis.capture_sublayer_outputs(tiny_model("bert"), [batch])] == [(12, HIDDEN)] * LAYERS


def test_capture_of_an_empty_split_is_an_error():
    with pytest.raises(PeltError, match="empty"):
        analysis.capture_sublayer_outputs(tiny_model("bert"), [])


def test_attention_norm_statistics_by_hand():
    before = [torch.tensor([[3.0, 4.0], [0.0, 1.0]])]  # norms 5, 1
    after = [torch.tensor([[6.0, 8.0], [0.0, 1.0]])]  # norms 10, 1; differences (3, 4) -> 5 and 0
    [row] = analysis.attention_norm_statistics(before, after).rows()
    assert row["norm_before"] == pytest.approx(3.0) and row["norm_after"] == pytest.approx(5.5)
    assert row["norm_change"] == pytest.approx(2.5) and row["difference"] == pytest.approx(2.5)
    assert row["relative_difference"] == pytest.approx((5 / 5 + 0 / 1) / 2)
    with pytest.raises(PeltError, match="same batches"):
        analysis.attention_norm_statistics(before, [torch.zeros(3, 2)])


# ---- a fitted map in place of fine-tuning ---------------------------------------------------------------------


def test_fitted_hadamard_map_reproduces_a_hadamard_fine_tuning_exactly():
    """A "fine-tuned" model that differs from its base only by W ⊙ A + b on the last layer: the Hadamard fit finds
    that W and b from captured outputs, identity elsewhere, and the base model with the fitted maps computes the
    fine-tuned model's logits."""
    base, tuned = tiny_model("bert"), tiny_model("bert")
    pelt.apply_method(tuned, pelt.HadamardConfig(layers=[LAYERS - 1], train_layernorm=False))
    g = torch.Generator().manual_seed(7)
    layer = tuned.get_submodule(encoder_layers(tuned)[-1].site("attention_output"))
    with torch.no_grad():
        layer.hadamard_weight.copy_(1 + 0.5 * torch.randn(HIDDEN, generator=g))
        layer.hadamard_bias.copy_(0.3 * torch.randn(HIDDEN, generator=g))
        tuned.classifier.weight.add_(torch.randn(tuned.classifier.weight.shape, generator=g))
    g = torch.Generator().manual_seed(8)
    batches = [{"input_ids": torch.randint(5, len(VOCAB), (16, 12), generator=g),
                "attention_mask": torch.ones(16, 12, dtype=torch.long)} for _ in range(4)]
    x, y = analysis.capture_sublayer_outputs(base, batches), analysis.capture_sublayer_outputs(tuned, batches)
    maps = [analysis.fit_map("hadamard", xi, yi) for xi, yi in zip(x, y)]
    assert torch.allclose(maps[-1].weight, layer.hadamard_weight, atol=1e-4)
    assert torch.allclose(maps[-1].bias, layer.hadamard_bias, atol=1e-4)
    assert torch.allclose(maps[0].weight, torch.ones(HIDDEN)) and torch.allclose(maps[0].bias, torch.zeros(HIDDEN))
    pair = ReferencePair(base, tuned, None, None, {}, None)  # type: ignore[arg-type]
    mapped = analysis.model_with_fitted_maps(pair, maps)
    assert isinstance(mapped.get_submodule(encoder_layers(mapped)[0].site("attention_output")), MappedSublayer)
    with torch.no_grad():
        expected, got = tuned(**batches[0]).logits, mapped(**batches[0]).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # The base model itself is untouched: its head is still its own.
    assert not torch.equal(base.classifier.weight, tuned.classifier.weight)
    with pytest.raises(PeltError, match="one per layer"):
        analysis.model_with_fitted_maps(pair, maps[:1])


def test_sequential_fits_recover_a_hadamard_fine_tuning_of_every_layer():
    """Fine-tuning = W ⊙ A + b on every layer. Fitted independently, the upper layers' maps meet inputs the lower
    maps changed and are off; fitted sequentially, each recovers its layer's W and b and the mapped base model
    computes the fine-tuned logits."""
    from pelt.analysis.attention import Captures, fit_layer_maps

    base, tuned = tiny_model("bert"), tiny_model("bert")
    pelt.apply_method(tuned, pelt.HadamardConfig(train_layernorm=False))
    g = torch.Generator().manual_seed(9)
    truth = []
    with torch.no_grad():
        for ref in encoder_layers(tuned):
            layer = tuned.get_submodule(ref.site("attention_output"))
            layer.hadamard_weight.copy_(1 + 0.5 * torch.randn(HIDDEN, generator=g))
            layer.hadamard_bias.copy_(0.3 * torch.randn(HIDDEN, generator=g))
            truth.append((layer.hadamard_weight.clone(), layer.hadamard_bias.clone()))
    g = torch.Generator().manual_seed(10)
    batches = [{"input_ids": torch.randint(5, len(VOCAB), (16, 12), generator=g),
                "attention_mask": torch.ones(16, 12, dtype=torch.long)} for _ in range(3)]
    pair = ReferencePair(base, tuned, None, None, {}, None)  # type: ignore[arg-type]
    captures = Captures.of(pair, batches, batches)
    sequential, errors = fit_layer_maps(pair, "hadamard", captures, sequential=True)
    independent, _ = fit_layer_maps(pair, "hadamard", captures)
    for fitted, (w, b) in zip(sequential, truth):
        assert torch.allclose(fitted.weight, w, atol=1e-4) and torch.allclose(fitted.bias, b, atol=1e-4)
    assert all(e["unexplained_change"] < 1e-6 for e in errors)
    assert not torch.allclose(independent[-1].weight, truth[-1][0], atol=1e-2)
    with torch.no_grad():
        mapped = analysis.model_with_fitted_maps(pair, sequential)
        assert torch.allclose(mapped(**batches[0]).logits, tuned(**batches[0]).logits, atol=1e-5)


def test_fitted_map_can_take_the_fine_tuned_layernorms():
    base, tuned = tiny_model("bert"), tiny_model("bert", seed=1)
    pair = ReferencePair(base, tuned, None, None, {}, None)  # type: ignore[arg-type]
    identity = [HadamardMap(torch.ones(HIDDEN), torch.zeros(HIDDEN)) for _ in range(LAYERS)]
    norm = encoder_layers(base)[0].site("attention_norm")
    with_base = analysis.model_with_fitted_maps(pair, identity)
    with_tuned = analysis.model_with_fitted_maps(pair, identity, finetuned_layernorms=True)
    assert torch.equal(with_base.get_submodule(norm).weight, base.get_submodule(norm).weight)
    assert torch.equal(with_tuned.get_submodule(norm).weight, tuned.get_submodule(norm).weight)
    ffn = encoder_layers(base)[0].site("ffn_output")
    assert torch.equal(with_tuned.get_submodule(ffn).weight, base.get_submodule(ffn).weight)  # the rest is base


# ---- end to end on a tiny fine-tuned reference ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT, SST-2 and CoLA files, and a full fine-tuning of it on SST-2 (trained once per module)."""
    from transformers import BertTokenizerFast

    from pelt.cli import main

    root = tmp_path_factory.mktemp("reference")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"), do_lower_case=True)
    tiny_model("bert").save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = write_sst2(root / "glue", separable_rows(48), separable_rows(24, seed=1))
    cola = data / "CoLA"
    cola.mkdir()
    for name, rows in (("train.tsv", separable_rows(40, seed=5)), ("dev.tsv", separable_rows(20, seed=6))):
        (cola / name).write_text("".join(f"src\t{label}\t\t{text}\n" for text, label in rows))
    assert main(["train", "--task", "sst2", "--method", "full", "--model", str(root / "model"), "--data-dir", str(data),
                 "--output-dir", str(root / "full"), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                 "--warmup-steps", "0", "--train-pooler"]) == 0
    return {"root": root, "model": root / "model", "data": data, "finetuned": root / "full" / "adapter"}


def test_norms_and_fitting_write_their_tables_and_figures(tiny_reference, tmp_path, capsys):
    ref = tiny_reference
    rc, out, err = run(capsys, "analyze", "norms", "--finetuned", ref["finetuned"], "--data-dir", ref["data"],
                       "--output-dir", tmp_path / "a", "--max-examples", 10)
    assert rc == 0, err
    result = json.loads((tmp_path / "a" / "attention_norms.json").read_text())
    assert result["finetuned"] == os.path.relpath(ref["finetuned"], tmp_path / "a")  # no machine paths in results
    assert result["examples"] == 10 and len(result["layers"]) == LAYERS
    assert all(r["difference"] > 0 for r in result["layers"])  # full fine-tuning moved every layer's output
    assert png(tmp_path / "a" / "attention_norms.png")
    assert "| layer |" in (tmp_path / "a" / "attention_norms.md").read_text()

    rc, out, err = run(capsys, "analyze", "fit", "--finetuned", ref["finetuned"], "--data-dir", ref["data"],
                       "--output-dir", tmp_path / "a", "--mlp-steps", 20, "--functions", "identity", "hadamard",
                       "linear")
    assert rc == 0, err
    fitting = json.loads((tmp_path / "a" / "fitting.json").read_text())
    assert len(fitting["per_layer"]) == 3 * LAYERS
    identity = [r for r in fitting["per_layer"] if r["function"] == "identity"]
    assert all(r["unexplained_change"] == pytest.approx(1.0) for r in identity)
    assert {r["parameters"] for r in fitting["per_layer"] if r["function"] == "hadamard"} == {2 * HIDDEN}
    # full fine-tuning scored as the saved adapter does, then each function with base and fine-tuned LayerNorms
    assert len(fitting["scores"]) == 1 + 3 * 2
    assert fitting["scores"][0]["metrics"] == pelt.pipeline.evaluate_adapter(ref["finetuned"], data_dir=ref["data"])
    assert png(tmp_path / "a" / "fitting.png")
    assert "## Task score" in (tmp_path / "a" / "fitting.md").read_text()
    assert len(fitting["finetuned_outputs"]) == LAYERS and fitting["finetuned"] == result["finetuned"]
    rc, out, err = run(capsys, "analyze", "fit", "--finetuned", ref["finetuned"], "--data-dir", ref["data"],
                       "--output-dir", tmp_path / "a", "--functions", "hadamard", "--sequential")
    assert rc == 0, err
    chained = json.loads((tmp_path / "a" / "fitting_sequential.json").read_text())
    assert chained["fits"] == "sequential" and fitting["fits"] == "independent"
    layer0 = [r for r in fitting["per_layer"] if r["function"] == "hadamard"][0]
    assert chained["per_layer"][0]["unexplained_change"] == pytest.approx(layer0["unexplained_change"])  # same input
    assert png(tmp_path / "a" / "fitting_sequential.png") and (tmp_path / "a" / "fitting.md").is_file()


def test_analyses_refuse_bad_input(tiny_reference, tmp_path, capsys):
    ref = tiny_reference
    assert_bad_input(capsys, ["analyze", "norms", "--finetuned", tmp_path / "nowhere", "--output-dir", tmp_path],
                     "does not exist")
    assert_bad_input(capsys, ["analyze", "fit", "--finetuned", ref["finetuned"], "--data-dir", ref["data"],
                              "--output-dir", tmp_path, "--functions", "cubic"], "unknown fitting function(s) cubic")
    assert not (tmp_path / "fitting.json").exists()
    assert_bad_input(capsys, ["analyze", "layers", "--task", "sst2", "--model", ref["model"], "--output-dir", tmp_path,
                              "--ks", 9], "k must be in 1..3")
    assert_bad_input(capsys, ["analyze", "modules", "--task", "sst2", "--model", ref["model"], "--output-dir", tmp_path,
                              "--module-sets", "W+gamma"], "Hadamard parts are W, b, LN")
    assert_bad_input(capsys, ["analyze", "modules", "--task", "sst2", "--model", ref["model"], "--output-dir", tmp_path,
                              "--per-layer", "first"], "--per-layer takes all, none")
    assert_bad_input(capsys, ["analyze", "layers", "--task", "sst2", "--model", ref["model"], "--output-dir", tmp_path,
                              "--reference", tmp_path / "nowhere"], "no results.json there")
    assert not (tmp_path / "results.jsonl").exists()  # refused before any run
    assert_bad_input(capsys, ["analyze", "shared", "--tasks", "sst2", "--model", ref["model"], "--output-dir", tmp_path],
                     "at least two different tasks")
    assert_bad_input(capsys, ["analyze", "shared", "--tasks", "sst2", "copa", "--model", ref["model"],
                              "--output-dir", tmp_path], "copa is multiple choice")
    assert_bad_input(capsys, ["analyze", "similarity", "--adapters", f"sst2={ref['finetuned']}", "--output-dir", tmp_path],
                     "at least two tasks")
    assert_bad_input(capsys, ["analyze", "similarity", "--adapters", "sst2", "--output-dir", tmp_path],
                     "--adapters takes TASK=DIR")


def test_attention_analyses_on_a_multiple_choice_task(tiny_reference, tmp_path, capsys):
    """COPA scores each choice as its own sequence: the analyses capture every choice's tokens."""
    from conftest import write_jsonl

    copa = [{"premise": f"w{i} w3 w9", "choice1": "w5 w6 w11", "choice2": "w7 w12",
             "question": ["cause", "effect"][i % 2], "label": i % 2, "idx": i} for i in range(12)]
    data = write_jsonl(tmp_path / "superglue" / "COPA", {"train": copa, "val": copa}).parent
    assert run(capsys, "train", "--task", "copa", "--method", "full", "--model", tiny_reference["model"],
               "--data-dir", data, "--output-dir", tmp_path / "ft", "--epochs", "1", "--batch-size", "4",
               "--split-protocol", "compacter")[0] == 0
    rc, out, err = run(capsys, "analyze", "fit", "--finetuned", tmp_path / "ft" / "adapter", "--data-dir", data,
                       "--output-dir", tmp_path / "a", "--functions", "identity", "hadamard")
    assert rc == 0, err
    fitting = json.loads((tmp_path / "a" / "fitting.json").read_text())
    tokens = sum(len(text.split()) + 2 for row in copa for text in  # [CLS] premise [SEP] because|so choice [SEP]
                 (f"{row['premise']} {'because' if row['question'] == 'cause' else 'so'} {row['choice1']}",
                  f"{row['premise']} {'because' if row['question'] == 'cause' else 'so'} {row['choice2']}"))
    assert fitting["fit_tokens"] == tokens + len(copa) * 2  # 3 special tokens per sequence, both choices
    assert set(fitting["scores"][0]["metrics"]) == {"validation", "test"}


# ---- layer and module ablations -------------------------------------------------------------------------------


@pytest.mark.parametrize("layers, expected", [([0, 1, 2, 5], "0-2,5"), ([4], "4"), ([1, 3], "1,3"), ([7, 6], "6-7")])
def test_layer_ranges_round_trip(layers, expected):
    assert _ranges(layers) == expected and parse_int_list(expected) == sorted(layers)


def test_canonical_variants():
    assert analysis.hadamard_variant(None, num_layers=6) == "hadamard"
    assert analysis.hadamard_variant(range(6), num_layers=6) == "hadamard"
    assert analysis.hadamard_variant([3, 4, 5], ["b"], num_layers=6) == "hadamard:layers=3-5:train_weight=false:train_layernorm=false"
    with pytest.raises(PeltError, match="out of range"):
        analysis.hadamard_variant([6], num_layers=6)
    with pytest.raises(PeltError, match="Hadamard parts"):
        analysis.hadamard_variant(None, [], num_layers=6)


def test_layer_ablation_runs():
    runs = analysis.layer_ablation("rte", 6, learning_rate=1e-3)
    assert len(runs) == 11  # top and bottom k for k < 6, and every layer once
    labels = {r.label: r.layers for r in runs}
    assert labels["top 2"] == (4, 5) and labels["bottom 2"] == (0, 1) and labels["all layers"] == tuple(range(6))
    assert {r.spec.learning_rate for r in runs} == {1e-3} and len({r.spec.key for r in runs}) == 11
    assert [len(r.layers) for r in analysis.layer_ablation("rte", 6, ks=[2])] == [2, 2]


def test_module_ablation_runs_share_keys_with_the_layer_ablation():
    modules = analysis.module_ablation("rte", 6)
    assert len(modules) == 7 * (1 + 6)
    layer_keys = {r.spec.key for r in analysis.layer_ablation("rte", 6)}
    shared = {r.label for r in modules if r.spec.key in layer_keys}
    assert shared == {"all layers", "layer 0", "layer 5"}  # W+b+LN everywhere = k=6, on layer 5 alone = top 1, ...
    assert len(analysis.module_ablation("rte", 6, per_layer=[], module_sets=[("W",)])) == 1


def trained_names(variant: str) -> set[str]:
    model = tiny_model("bert")
    method, options = parse_variant(variant)
    pelt.apply_method(model, variant_config(method, options), train_head=False)
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("run_index", range(7 * (1 + LAYERS)))
def test_each_module_ablation_trains_exactly_what_it_names(run_index):
    ablation = analysis.module_ablation("sst2", LAYERS)[run_index]
    expected = set()
    for layer in ablation.layers:
        prefix = f"bert.encoder.layer.{layer}.attention.output"
        expected |= {f"{prefix}.dense.hadamard_weight"} if "W" in ablation.parts else set()
        expected |= {f"{prefix}.dense.hadamard_bias"} if "b" in ablation.parts else set()
        expected |= {f"{prefix}.LayerNorm.weight", f"{prefix}.LayerNorm.bias"} if "LN" in ablation.parts else set()
    assert trained_names(ablation.spec.variant) == expected


@pytest.mark.parametrize("run_index", range(2 * LAYERS - 1))
def test_each_layer_ablation_trains_exactly_its_layers(run_index):
    ablation = analysis.layer_ablation("sst2", LAYERS)[run_index]
    layers = {int(n.split(".")[3]) for n in trained_names(ablation.spec.variant)}
    assert layers == set(ablation.layers) and set(ablation.parts) == set(PARTS)


def test_layer_ablation_on_t5_adapts_the_same_layers_of_both_stacks(tiny_t5_dir):
    assert analysis.encoder_depth(str(tiny_t5_dir)) == 2  # conftest.tiny_t5: 2 encoder and 2 decoder layers
    [bottom] = [r for r in analysis.layer_ablation("rte", LAYERS, ks=[1]) if r.label == "bottom 1"]
    model = tiny_model("t5")
    method, options = parse_variant(bottom.spec.variant)
    pelt.apply_method(model, variant_config(method, options))
    adapted = {(n.split(".")[0], int(n.split(".")[2])) for n, p in model.named_parameters()
               if p.requires_grad and "hadamard" in n}
    assert adapted == {("encoder", 0), ("decoder", 0)}


def test_untrained_parts_stay_at_identity_and_are_not_saved(tmp_path):
    model = tiny_model("bert")
    pelt.apply_method(model, pelt.HadamardConfig(train_weight=False, train_layernorm=False))
    report = pelt.parameter_report(model)
    assert report.groups["method"] == HIDDEN * LAYERS and report.groups["layernorm"] == 0
    pelt.save_adapter(model, tmp_path / "a")
    assert not any("hadamard_weight" in n for n in load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    fresh = pelt.load_adapter(tiny_model("bert"), tmp_path / "a")
    layer = fresh.get_submodule("bert.encoder.layer.0.attention.output.dense")
    assert torch.equal(layer.hadamard_weight, torch.ones(HIDDEN)) and not layer.hadamard_weight.requires_grad
    with pytest.raises(PeltError, match="all off"):
        pelt.HadamardConfig(train_weight=False, train_bias=False, train_layernorm=False)


def test_bottom_k_and_its_conflicts():
    assert {int(n.split(".")[3]) for n in trained_names("hadamard:bottom_k=2")} == {0, 1}
    with pytest.raises(PeltError, match="not top_k and bottom_k"):
        pelt.HadamardConfig(top_k=1, bottom_k=1)
    with pytest.raises(PeltError, match="bottom_k=4 but the encoder has only 3 layers"):
        pelt.apply_method(tiny_model("bert"), pelt.HadamardConfig(bottom_k=4))
    with pytest.raises(PeltError, match="bottom_k must be at least 1"):
        pelt.HadamardConfig(bottom_k=0)


def test_variant_options_are_typed_by_the_config():
    assert parse_variant("hadamard:layers=0-2:train_bias=false") == ("hadamard", {"layers": (0, 1, 2), "train_bias": False})
    with pytest.raises(PeltError, match="train_bias='maybe' of method 'hadamard' must be true or false"):
        parse_variant("hadamard:train_bias=maybe")
    with pytest.raises(PeltError, match="unknown option 'depth'"):
        parse_variant("hadamard:depth=3")


def fake_record(run: analysis.AblationRun, validation: float, test: float) -> dict:
    return {"key": run.spec.key, "status": "ok", "variant": run.spec.variant, "task": run.spec.task,
            "main_metric": "accuracy", "selection_split": "validation",
            "metrics": {"validation": {"accuracy": validation}, "test": {"accuracy": test}},
            "parameters": {"method_percent": 0.01 * len(run.layers)},
            "history": [{"stage": "head", "epoch": 1.0, "eval_accuracy": 0.55}]}


def test_ablation_reports_from_a_results_file(tmp_path):
    runs = analysis.layer_ablation("rte", 3)
    records = [fake_record(r, 0.6 + 0.01 * i, 0.5 + 0.01 * i) for i, r in enumerate(runs)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reference = {"main_metric": "accuracy", "metrics": {"validation": {"accuracy": 0.7}, "test": {"accuracy": 0.66}}}
    text = analysis.write_layer_report(runs, tmp_path, tmp_path / "out", reference=reference).read_text()
    # runs: top 1, bottom 1, top 2, bottom 2, all layers -> validation 60..64, test 50..54
    assert "| 1 | 60.0 / 50.0 | 61.0 / 51.0 | 0.0100 |" in text
    assert "| 3 | 64.0 / 54.0 | 64.0 / 54.0 | 0.0300 |" in text
    assert "full fine-tuning: 70.0 / 66.0 (validation / test)\n" in text
    assert "head alone (stage (a) of the recipe): 55.0" in text
    assert png(tmp_path / "out" / "layers.png")
    # Runs on a smaller subsample than the reference: the report says so rather than compare them silently.
    for r in records:
        r["train_samples"] = 2000
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = analysis.write_layer_report(runs, tmp_path, tmp_path / "out",
                                       reference={**reference, "train_samples": 8000}).read_text()
    assert "full fine-tuning: 70.0 / 66.0 (validation / test), trained on 8,000 examples" in text
    assert "the adapter runs train on 2,000 examples" in text

    modules = analysis.module_ablation("rte", 3, module_sets=[("W",), ("b", "LN")], per_layer=[2])
    records = [fake_record(r, 0.6, 0.5 + 0.1 * i) for i, r in enumerate(modules[:3])]  # the last run never ran
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = analysis.write_module_report(modules, tmp_path, tmp_path / "out").read_text()
    assert "| trained | all layers | layer 2 |" in text
    assert "| W | 60.0 / 50.0 | 60.0 / 70.0 |" in text and "| b + LN | 60.0 / 60.0 | – |" in text
    assert png(tmp_path / "out" / "modules.png")
    two_panels = png_width(tmp_path / "out" / "modules.png")
    # Without per-layer runs the figure has the all-layer panel only, not an empty second one.
    overall_only = analysis.module_ablation("rte", 3, module_sets=[("W",), ("b", "LN")], per_layer=[])
    analysis.write_module_report(overall_only, tmp_path, tmp_path / "overall")
    assert png_width(tmp_path / "overall" / "modules.png") == two_panels // 2


def test_ablation_report_without_runs_is_an_error(tmp_path):
    with pytest.raises(PeltError, match="run the ablation first"):
        analysis.write_layer_report(analysis.layer_ablation("rte", 3), tmp_path, tmp_path)


def test_module_ablation_end_to_end_through_the_grid(tiny_reference, tmp_path, capsys):
    ref = tiny_reference
    argv = ["analyze", "modules", "--task", "sst2", "--model", ref["model"], "--data-dir", ref["data"],
            "--output-dir", tmp_path / "m", "--split-protocol", "standard", "--module-sets", "b", "--per-layer", "2",
            "--train-args", "--epochs 1 --batch-size 8 --warmup-steps 0", "--reference", ref["finetuned"].parent,
            "--report-dir", tmp_path / "report"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    records = [json.loads(line) for line in (tmp_path / "m" / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == ["hadamard:train_weight=false:train_layernorm=false",
                                               "hadamard:layers=2:train_weight=false:train_layernorm=false"]
    assert all(r["status"] == "ok" for r in records)
    assert records[1]["parameters"]["groups"]["method"] == HIDDEN  # b of one layer
    assert png(tmp_path / "report" / "modules.png") and not (tmp_path / "m" / "modules.md").exists()
    assert "full fine-tuning" in (tmp_path / "report" / "modules.md").read_text()
    rc, out, err = run(capsys, *argv)  # a second call trains nothing
    assert rc == 0 and "2 already recorded, 0 to run" in out


# ---- shared adapters ------------------------------------------------------------------------------------------


def save_moved(model_dir: Path, folder: Path, task: str, move_w: torch.Tensor, move_b: torch.Tensor) -> Path:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    pelt.apply_method(model, pelt.HadamardConfig())
    with torch.no_grad():
        for ref in encoder_layers(model):
            layer = model.get_submodule(ref.site("attention_output"))
            layer.hadamard_weight.add_(move_w)
            layer.hadamard_bias.add_(move_b)
    return pelt.save_adapter(model, folder, metadata={"task": task, "model": str(model_dir)})


def test_similarity_of_adapters_with_known_moves(tiny_reference, tmp_path):
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(HIDDEN, generator=g), torch.randn(HIDDEN, generator=g)
    a = save_moved(tiny_reference["model"], tmp_path / "a", "sst2", w, b)
    c = save_moved(tiny_reference["model"], tmp_path / "c", "cola", -2 * w, 3 * b)
    result = analysis.adapter_similarity({"sst2": a, "cola": c})
    rows = {(r["layer"], r["tensor"]): r for r in result["rows"]}
    assert set(rows) == {(i, t) for i in range(LAYERS) for t in ("W", "b", "LN γ", "LN β")}
    assert rows[(1, "W")]["cosine"]["sst2~cola"] == pytest.approx(-1.0)
    assert rows[(1, "b")]["cosine"]["sst2~cola"] == pytest.approx(1.0)
    assert rows[(1, "b")]["same_direction"] == 1.0 and rows[(1, "W")]["same_direction"] == 0.0
    assert rows[(0, "W")]["move_norm"]["cola"] == pytest.approx(2 * float(w.norm()), rel=1e-5)
    assert rows[(0, "LN γ")]["move_norm"]["sst2"] == 0.0  # untouched: no move from the pretrained LayerNorm
    assert result["chance_same_direction"] == 0.5
    analysis.write_similarity_report(result, tmp_path / "out")
    assert png(tmp_path / "out" / "similarity.png") and "cos sst2~cola" in (tmp_path / "out" / "similarity.md").read_text()


def test_similarity_refuses_adapters_of_different_methods(tiny_reference, tmp_path):
    a = save_moved(tiny_reference["model"], tmp_path / "a", "sst2", torch.zeros(HIDDEN), torch.zeros(HIDDEN))
    with pytest.raises(PeltError, match="different methods"):
        analysis.adapter_similarity({"sst2": a, "cola": tiny_reference["finetuned"]})


def test_shared_adapter_trains_one_adapter_for_two_tasks(tiny_reference, tmp_path):
    ref = tiny_reference
    config = pelt.train.TrainConfig(output_dir=str(tmp_path / "shared"), epochs=1, batch_size=8, learning_rate=5e-2,
                                    warmup_steps=0, head_epochs=1)
    results = analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, model=str(ref["model"]),
                                            data_dir=ref["data"], split_protocol="standard", train_pooler=True,
                                            log=lambda line: None)
    assert [h["stage"] for h in results["history"]] == ["head", "method"]
    params = results["parameters"]
    shared, head = 4 * HIDDEN * LAYERS, HIDDEN * HIDDEN + HIDDEN + 2 * HIDDEN + 2  # pooler + classifier
    assert params["shared"] == shared and params["heads"] == {"sst2": head, "cola": head}
    assert params["stored_per_task"] == 2 * shared + 2 * head and params["stored_shared"] == shared + 2 * head
    saved = {t: load_file(str(tmp_path / "shared" / t / "adapter" / "adapter_model.safetensors")) for t in ("sst2", "cola")}
    adapter_names = [n for n in saved["sst2"] if "hadamard" in n or "LayerNorm" in n]
    assert len(adapter_names) == 4 * LAYERS
    assert all(torch.equal(saved["sst2"][n], saved["cola"][n]) for n in adapter_names)  # one adapter
    assert not torch.equal(saved["sst2"]["classifier.weight"], saved["cola"]["classifier.weight"])  # two heads
    moved = saved["sst2"]["bert.encoder.layer.0.attention.output.dense.hadamard_bias"]
    assert moved.abs().sum() > 0  # the shared adapter was trained
    # Each task's folder is a complete adapter: pelt eval scores it as training did.
    for task in ("sst2", "cola"):
        metrics = pelt.pipeline.evaluate_adapter(tmp_path / "shared" / task / "adapter", data_dir=ref["data"])
        assert metrics["validation"] == pytest.approx(results["metrics"][task]["validation"])


def test_the_shared_adapter_trains_the_head_alone_first(tiny_reference, tmp_path, monkeypatch):
    """The shared path runs the same recipe as one task's: after stage (a) only the heads have moved, after
    stage (b) the shared Hadamard adapter has too."""
    from pelt.train import interleaved

    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    real = interleaved._AtEpochEnd.on_epoch_end

    def snapshot(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        snapshots[self.stage.name] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real(self, args, state, control, model=model, **kwargs)
    monkeypatch.setattr(interleaved._AtEpochEnd, "on_epoch_end", snapshot)
    config = pelt.train.TrainConfig(output_dir=str(tmp_path / "shared"), epochs=1, batch_size=8, learning_rate=5e-2,
                                    warmup_steps=0, head_epochs=1, head_learning_rate=5e-2)
    analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, model=str(tiny_reference["model"]),
                                  data_dir=tiny_reference["data"], split_protocol="standard", log=lambda line: None)
    after_a, after_b = snapshots["head"], snapshots["method"]
    heads = {n for n in after_a if n.endswith(("classifier.weight", "classifier.bias"))}
    hadamard = {n for n in after_a if ".hadamard_" in n}
    assert len(heads) == 4 and len(hadamard) == 2 * LAYERS  # two tasks' heads, one adapter (shared names once)
    for name in hadamard:
        start = torch.ones_like(after_a[name]) if name.endswith("weight") else torch.zeros_like(after_a[name])
        assert torch.equal(after_a[name], start), f"stage (a) moved {name}"
        assert not torch.equal(after_b[name], start), f"stage (b) left {name} at its init"
    for name in heads:
        assert not torch.equal(after_a[name], after_b[name]), f"stage (b) froze {name}"


def test_shared_adapter_with_mean_pooling_stores_classifiers_only(tiny_reference, tmp_path):
    """Every task's model pools with its own mask (the second task's backbone object carries the hook too): the
    saved adapters, rebuilt by `pelt eval`, score exactly as training measured."""
    ref = tiny_reference
    config = pelt.train.TrainConfig(output_dir=str(tmp_path / "shared"), epochs=1, batch_size=8, learning_rate=5e-2,
                                    warmup_steps=0, head_epochs=0)
    results = analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, model=str(ref["model"]),
                                            data_dir=ref["data"], split_protocol="standard", pooling="mean",
                                            log=lambda line: None)
    assert results["parameters"]["heads"] == {"sst2": 2 * HIDDEN + 2, "cola": 2 * HIDDEN + 2}
    for task in ("sst2", "cola"):
        adapter = tmp_path / "shared" / task / "adapter"
        assert pelt.read_adapter_config(adapter)["pooling"] == "mean"
        metrics = pelt.pipeline.evaluate_adapter(adapter, data_dir=ref["data"])
        assert metrics["validation"] == pytest.approx(results["metrics"][task]["validation"])


def test_every_shared_task_model_pools_over_its_own_mask(tiny_reference):
    from pelt.analysis.shared import shared_models

    specs = [pelt.tasks.get_task("sst2"), pelt.tasks.get_task("cola")]
    models, _ = shared_models(specs, pelt.HadamardConfig(), str(tiny_reference["model"]), pooling="mean")
    assert models[1].bert.encoder is models[0].bert.encoder  # one backbone
    inputs = tiny_inputs("bert", batch=1, length=5)
    padded = with_padding(inputs)
    for task_model in models:
        torch.testing.assert_close(model_output(task_model.eval(), padded), model_output(task_model, inputs),
                                   rtol=0, atol=1e-5)


def test_a_reference_trained_with_pooling_gets_a_base_model_that_pools_the_same(tiny_reference, tmp_path):
    from pelt.analysis.reference import load_reference_pair
    from pelt.pooling import TokenPooling

    ref = tiny_reference
    tuned = pelt.apply_method(pelt.pipeline.load_task_model(pelt.tasks.get_task("sst2"), str(ref["model"]))[0],
                              pelt.FullConfig(), pooling="cls")
    pelt.save_adapter(tuned, tmp_path / "ft", metadata={"task": "sst2"})
    pair = load_reference_pair(tmp_path / "ft", model=str(ref["model"]))
    assert isinstance(pair.base.bert.pooler, TokenPooling) and pair.base.bert.pooler.mode == "cls"
    assert pair.head_names() == ["classifier.weight", "classifier.bias"]


def test_analyze_shared_compares_with_per_task_adapters(tiny_reference, tmp_path, capsys):
    ref = tiny_reference
    rc, out, err = run(capsys, "analyze", "shared", "--tasks", "sst2", "cola", "--model", ref["model"],
                       "--data-dir", ref["data"], "--output-dir", tmp_path / "s", "--split-protocol", "standard",
                       "--max-train-samples", "sst2=32",
                       "--train-args", "--epochs 1 --batch-size 8 --lr 5e-2 --warmup-steps 0 --train-pooler")
    assert rc == 0, err
    text = (tmp_path / "s" / "shared.md").read_text()
    assert "| sst2 | accuracy |" in text and "| cola | matthews_correlation |" in text
    per_task = json.loads((tmp_path / "s" / "runs" / "per_task" / "sst2" / "results.json").read_text())
    assert per_task["train_samples"] == 32 and per_task["train_config"]["learning_rate"] == 5e-2
    assert (tmp_path / "s" / "similarity.md").is_file() and png(tmp_path / "s" / "similarity.png")
    rc, out, err = run(capsys, "analyze", "shared", "--tasks", "sst2", "cola", "--model", ref["model"],
                       "--data-dir", ref["data"], "--output-dir", tmp_path / "s", "--split-protocol", "standard",
                       "--max-train-samples", "sst2=32", "--train-args", "--epochs 1")
    assert rc == 0  # everything there already: nothing trains again (other settings would have shown)
    assert json.loads((tmp_path / "s" / "runs" / "per_task" / "sst2" / "results.json").read_text()) == per_task
    summary = json.loads((tmp_path / "s" / "shared.json").read_text())
    assert summary["tasks"] == ["sst2", "cola"] and str(tmp_path) not in json.dumps(summary)


def test_fine_tuned_reference_is_trained_once(tiny_reference, tmp_path):
    ref = tiny_reference
    config = pelt.train.TrainConfig(output_dir="ignored", epochs=1, batch_size=8, warmup_steps=0)
    adapter = analysis.finetuned_reference("sst2", tmp_path / "ft", config, model=str(ref["model"]),
                                           data_dir=ref["data"], split_protocol="standard")
    stamp = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    again = analysis.finetuned_reference("sst2", tmp_path / "ft", config, model=str(ref["model"]),
                                         data_dir=ref["data"], split_protocol="standard")
    assert again == adapter and (adapter / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert pelt.read_adapter_config(adapter)["method"] == "full"


def test_ablation_grid_with_a_failing_run_goes_on(tmp_path):
    runs = analysis.layer_ablation("sst2", 3, ks=[1])

    def runner(cmd: list[str], output_dir: Path, env: dict[str, str]) -> tuple[int, str]:
        if "--layers" in cmd and cmd[cmd.index("--layers") + 1] == "0":
            return 1, "pelt: error: boom\n"
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(fake_record(runs[0], 0.6, 0.5)))
        return 0, ""

    records = analysis.run_ablation(runs, tmp_path, GridSettings(), runner=runner, log=lambda line: None)
    assert sorted(r["status"] for r in records) == ["failed", "ok"]
    text = analysis.write_layer_report(runs, tmp_path, tmp_path).read_text()
    assert "| 1 | 60.0 / 50.0 | failed |" in text


def test_a_diverging_shared_adapter_stops_at_the_step(tiny_reference, tmp_path):
    config = pelt.train.TrainConfig(output_dir=str(tmp_path / "shared"), epochs=1, batch_size=8, learning_rate=1e30,
                                    warmup_steps=0, head_epochs=0)
    with pytest.raises(PeltError, match=r"training diverged at step [1-9]\d* \(method stage, learning rate 1e\+30\): "
                                        r"the loss of (sst2|cola) is nan"):
        analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, model=str(tiny_reference["model"]),
                                      data_dir=tiny_reference["data"], split_protocol="standard", log=lambda line: None)
    assert not list((tmp_path / "shared").glob("*/adapter"))  # nothing diverged was saved


def test_a_failed_shared_run_with_overwrite_puts_every_task_adapter_back(tiny_reference, tmp_path, monkeypatch):
    out = tmp_path / "shared"
    options = dict(model=str(tiny_reference["model"]), data_dir=tiny_reference["data"], split_protocol="standard",
                   log=lambda line: None)
    config = pelt.train.TrainConfig(output_dir=str(out), epochs=1, batch_size=8, learning_rate=5e-2, warmup_steps=0,
                                    head_epochs=0)
    analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, **options)
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(PeltError, match="already holds a run"):
        analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), config, **options)
    def full_disk(path, value):  # the new run's task adapters are saved; its results are not
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr("pelt.analysis.shared.write_json", full_disk)
    again = dataclasses.replace(config, overwrite=True, seed=7)
    with pytest.raises(OSError, match="No space left"):
        analysis.train_shared_adapter(["sst2", "cola"], pelt.HadamardConfig(), again, **options)
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
