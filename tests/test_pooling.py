"""`pooling`: BERT's pooler replaced by the [CLS] state or the masked mean of the tokens' states, nothing trained."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_OPTIONS, model_output, tiny_inputs, tiny_model, with_padding

import pelt
from pelt.pooling import TokenPooling
from pelt.errors import PeltError


def _by_hand(model: torch.nn.Module, inputs: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """The classifier on the pooled last hidden states of the unchanged base model (eval mode: no dropout)."""
    with torch.no_grad():
        states = model.bert(**inputs).last_hidden_state
        if pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1)
        return model.classifier(pooled)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_feeds_the_classifier_what_it_names(pooling: str) -> None:
    inputs = tiny_inputs("bert")
    expected = _by_hand(tiny_model("bert"), inputs, pooling)
    adapted = pelt.apply_method(tiny_model("bert"), pelt.HadamardConfig(), pooling=pooling)  # identity at init
    assert isinstance(adapted.bert.pooler, TokenPooling)
    torch.testing.assert_close(model_output(adapted, inputs), expected, rtol=0, atol=1e-6)
    # and it differs from BERT's pooler, so the comparison above could fail
    assert not torch.allclose(model_output(tiny_model("bert"), inputs), expected, atol=1e-3)


def test_mean_pooling_ignores_padding() -> None:
    model = pelt.apply_method(tiny_model("bert"), pelt.HadamardConfig(), pooling="mean")
    inputs = tiny_inputs("bert", batch=1, length=5)
    padded = with_padding(inputs)
    torch.testing.assert_close(model_output(model, padded), model_output(model, inputs), rtol=0, atol=1e-5)


def test_mean_pooling_covers_the_prompt_tuning_widened_mask() -> None:
    """Prompt tuning adds tokens and widens the mask: the mean runs over the prompt and the real tokens, not the
    padding."""
    model = pelt.apply_method(tiny_model("bert"), pelt.PromptTuningConfig(num_tokens=4), pooling="mean")
    inputs = tiny_inputs("bert", batch=1, length=5)
    inputs["attention_mask"][:] = 1  # no padding: the mean is over every state the backbone returns
    with torch.no_grad():
        states = model.bert(**inputs).last_hidden_state
    assert states.shape[1] == 4 + 5
    torch.testing.assert_close(model_output(model, inputs), model.classifier(states.mean(1)), rtol=0, atol=1e-6)
    padded = with_padding(inputs)
    torch.testing.assert_close(model_output(model, padded), model_output(model, inputs), rtol=0, atol=1e-5)


def test_mean_pooling_without_return_dict_and_with_a_positional_mask() -> None:
    model = pelt.apply_method(tiny_model("bert"), pelt.HadamardConfig(), pooling="mean")
    inputs = tiny_inputs("bert")
    expected = model_output(model, inputs)
    with torch.no_grad():
        as_tuple = model(inputs["input_ids"], inputs["attention_mask"], return_dict=False)[0]
    torch.testing.assert_close(as_tuple, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["full", "bitfit", "intrinsic-said", "hadamard"])
def test_no_method_trains_a_replaced_pooler_and_only_the_classifier_is_head(method: str) -> None:
    config = pelt.make_config(method, **TINY_OPTIONS.get(method, {}))
    model = pelt.apply_method(tiny_model("bert"), config, pooling="cls")
    state = model.pelt_state
    assert sorted(state.head) == ["classifier.bias", "classifier.weight"]
    assert not any("pooler" in name for name, _ in model.named_parameters())
    model.train()
    model(**tiny_inputs("bert")).logits.sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(state.trainable)


def test_save_and_load_keep_the_pooling(tmp_path) -> None:
    inputs = tiny_inputs("bert")
    model = pelt.apply_method(tiny_model("bert"), pelt.HadamardConfig(), pooling="mean")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    pelt.save_adapter(model, tmp_path / "a")
    assert pelt.read_adapter_config(tmp_path / "a")["pooling"] == "mean"
    reloaded = pelt.load_adapter(tiny_model("bert", seed=0), tmp_path / "a")
    assert isinstance(reloaded.bert.pooler, TokenPooling) and reloaded.bert.pooler.mode == "mean"
    assert torch.equal(model_output(reloaded, inputs), model_output(model, inputs))


@pytest.mark.parametrize("family, kwargs, message", [
    ("bert", {"pooling": "max"}, "pooling must be one of cls, mean"),
    ("bert", {"pooling": "cls", "train_pooler": True}, "pick one"),
    ("roberta", {"pooling": "mean"}, "has no BERT-style pretrained pooler"),
])
def test_impossible_pooling_is_refused_and_the_model_is_left_alone(family, kwargs, message) -> None:
    model = tiny_model(family)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(PeltError, match=message):
        pelt.apply_method(model, pelt.HadamardConfig(), **kwargs)
    assert getattr(model, "pelt_state", None) is None
    assert model.state_dict().keys() == before.keys()  # BERT's pooler still in place


def test_a_failing_method_gives_the_pooler_back() -> None:
    model = tiny_model("bert")
    pooler = model.bert.pooler
    with pytest.raises(PeltError):
        pelt.apply_method(model, pelt.make_config("compacter", n=3), pooling="mean")  # 3 does not divide 32
    assert model.bert.pooler is pooler


# ---- the default: mean pooling where the checkpoint's pooler was never trained -------------------------------


def _train(capsys, model_dir, data, out_dir, *extra) -> tuple[dict, str]:
    from conftest import run

    rc, out, err = run(capsys, "train", "--model", model_dir, "--task", "sst2", "--data-dir", data, "--output-dir",
                       out_dir, "--epochs", 1, "--head-epochs", 0, "--batch-size", 8, *extra)
    assert rc == 0, err
    return pelt.read_adapter_config(out_dir / "adapter"), out


def test_an_untrained_pooler_makes_mean_pooling_the_default(capsys, tiny_model_dir, tiny_glue, tmp_path) -> None:
    from safetensors.torch import load_file

    # the tiny checkpoint's pooler bias is all zeros, as the bundled MiniLM's: never trained
    config, out = _train(capsys, tiny_model_dir, tiny_glue, tmp_path / "auto")
    assert config["pooling"] == "mean"
    assert "pooling mean: this checkpoint's pooler was never trained" in out
    saved = load_file(str(tmp_path / "auto" / "adapter" / "adapter_model.safetensors"))
    assert not [name for name in saved if "pooler" in name]
    assert sum(t.numel() for n, t in saved.items() if n.startswith("classifier.")) == 32 * 2 + 2

    config, out = _train(capsys, tiny_model_dir, tiny_glue, tmp_path / "kept", "--pooling", "pooler")
    assert config["pooling"] is None and "pooling mean" not in out
    config, _ = _train(capsys, tiny_model_dir, tiny_glue, tmp_path / "trained", "--train-pooler")
    assert config["pooling"] is None and config["train_pooler"] is True


def test_a_trained_pooler_stays_the_default(capsys, tiny_model_dir, tiny_glue, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.bert.pooler.dense.bias.fill_(0.01)  # what any training leaves
    model.save_pretrained(tiny_model_dir)
    config, out = _train(capsys, tiny_model_dir, tiny_glue, tmp_path / "run")
    assert config["pooling"] is None and "pooling mean" not in out
