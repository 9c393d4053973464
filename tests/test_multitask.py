"""One backbone, many tasks: every row of a mixed batch equals its own adapter loaded alone.

Over every registered method × every supported family, with trained-looking (perturbed) parameters and heads of
different label counts, a task of another method and rows without a task in the same batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    ALL_FAMILIES,
    ENCODER_FAMILIES,
    TINY_OPTIONS,
    model_output,
    perturb_trainable,
    tiny_config,
    tiny_inputs,
    tiny_model,
)
from transformers import AutoModelForMultipleChoice

import pelt
from pelt.methods import METHODS, get_method, make_config
from pelt.multitask import MultiTaskModel

METHOD_NAMES = sorted(METHODS)
REFUSED = {"full", "intrinsic-said"}  # they change every weight: no shared backbone
CASES = [(m, f) for m in METHOD_NAMES for f in ALL_FAMILIES]
TOLERANCE = 1e-5


def adapted(method: str, family: str, seed: int, num_labels: int = 2, *, backbone: torch.nn.Module | None = None,
            **options) -> torch.nn.Module:
    """A task model of `method` whose trained parameters (and head) look trained: moved away from their init."""
    model = tiny_model(family, 0, num_labels=num_labels)
    if backbone is not None:  # the weights of another model's backbone (its pooler left out where this has none)
        model.base_model.load_state_dict(backbone.base_model.state_dict(), strict=False)
    setup = {k: options.pop(k) for k in ("train_pooler", "pooling") if k in options}
    pelt.apply_method(model, make_config(method, **{**TINY_OPTIONS.get(method, {}), **options}), **setup)
    perturb_trainable(model, seed=seed)
    return model.eval()


def base_states(family: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return tiny_model(family, 0).base_model(**inputs).last_hidden_state


def mixed(mt: MultiTaskModel, inputs: dict[str, torch.Tensor], tasks: list[str | None]):
    with torch.no_grad():
        return mt(**inputs, tasks=tasks)


def assert_backbone_untouched(mt: MultiTaskModel) -> None:
    """No hook and no forward of pelt's left on any module of the backbone."""
    for name, module in mt.backbone.named_modules():
        assert "forward" not in module.__dict__, name
        assert not module._forward_hooks and not module._forward_pre_hooks, name


@pytest.mark.parametrize("method,family", CASES)
def test_mixed_batch_equals_each_rows_own_adapter(method: str, family: str, tmp_path: Path) -> None:
    mt = MultiTaskModel(tiny_model(family, 0))
    if method in REFUSED:
        pelt.save_adapter(adapted(method, family, seed=1), tmp_path / "a")
        with pytest.raises(pelt.PeltError, match="cannot share a backbone"):
            mt.add_task("t", tmp_path / "a")
        assert not mt.tasks and not list(mt.sites)
        return
    labels = [2, 3, 1] if family != "t5" else [2, 2, 2]  # 1: a regression head
    singles = {}
    for i, count in enumerate(labels):
        singles[f"t{i}"] = adapted(method, family, seed=10 + i, num_labels=count)
        pelt.save_adapter(singles[f"t{i}"], tmp_path / f"a{i}")
        mt.add_task(f"t{i}", tmp_path / f"a{i}")
    other = "lora" if method != "lora" else "hadamard"
    singles["other"] = adapted(other, family, seed=99)
    mt.add_task("other", singles["other"])  # an adapted model in memory works as well as a folder

    inputs = tiny_inputs(family, batch=6, length=8)
    inputs["attention_mask"][[0, 1, 2, 5], -4:] = 0  # the tasks' rows short, the others full: with 4 prompt
    tasks = ["t0", "t1", "t2", None, "other", "t1"]  # tokens, no row is wider than before
    out = mixed(mt, inputs, tasks)
    base = base_states(family, {k: v for k, v in inputs.items() if k != "decoder_input_ids"}) \
        if family != "t5" else model_output(tiny_model(family, 0), inputs)
    for row, task in enumerate(tasks):
        if task is None:  # the backbone alone
            if family == "t5":
                got, want = out.logits[row], base[row]
            else:
                real = inputs["attention_mask"][row].bool()
                got, want = out.last_hidden_state[row, : real.shape[0]][real], base[row][real]
        else:
            got, want = out.logits[row], model_output(singles[task], inputs)[row]
            alone = model_output(tiny_model(family, 0, num_labels=want.shape[-1]), inputs)[row]
            assert (want - alone).abs().max() > 1e-3, "the adapted task should differ from the base model"
        assert (got - want).abs().max() <= TOLERANCE, (task, (got - want).abs().max())

    # adding and removing tasks leaves the others' rows unchanged; a task like t0 costs its own tensors exactly
    third = adapted(method, family, seed=20)
    before = mt.stored_bytes()
    mt.add_task("t3", third)
    own = sum(p.numel() * p.element_size() for n, p in third.named_parameters() if n in third.pelt_state.trainable)
    assert mt.stored_bytes() - before == own
    mt.remove_task("t1")
    again = mixed(mt, inputs, ["t0", "t3", "t2", None, "other", "t3"])
    for row in (0, 2, 3, 4):
        assert torch.equal(again.last_hidden_state[row], out.last_hidden_state[row])
        if row != 3 or family == "t5":
            assert torch.equal(again.logits[row], out.logits[row])
    with pytest.raises(pelt.PeltError, match="unknown task 't1'"):
        mixed(mt, inputs, ["t1"] * 6)
    for name in ("t0", "t2", "t3", "other"):
        mt.remove_task(name)
    assert mt.stored_bytes() == 0 and not list(mt.sites) and not list(mt.heads)
    assert_backbone_untouched(mt)


def test_refusal_names_the_method_and_what_to_do_instead(tmp_path: Path) -> None:
    mt = MultiTaskModel(tiny_model("bert", 0))
    pelt.save_adapter(adapted("intrinsic-said", "bert", seed=1), tmp_path / "said")
    with pytest.raises(pelt.PeltError, match=r"intrinsic-said.*pelt.merge"):
        mt.add_task("said", tmp_path / "said")
    with pytest.raises(pelt.PeltError, match=r"'full'.*pelt.load_adapter"):
        mt.add_task("full", adapted("full", "bert", seed=1))


def _multiple_choice(family: str, seed: int | None = None, method: str = "") -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForMultipleChoice.from_config(tiny_config(family)).eval()
    if seed is None:
        return model
    pelt.apply_method(model, make_config(method, **TINY_OPTIONS.get(method, {})))
    perturb_trainable(model, seed=seed)
    return model.eval()


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_heads_of_every_kind_share_a_batch(family: str) -> None:
    """Label counts 2 and 3, a regression head, a multiple-choice head (COPA-like), and on BERT the pooler trained
    per task and mean / [CLS] pooling, all in one forward pass."""
    # RoBERTa's multiple-choice head reads the pooler, which its sequence classifier is built without
    base = _multiple_choice(family)
    singles = {"two": adapted("hadamard", family, 1, backbone=base),
               "three": adapted("lora", family, 2, num_labels=3, backbone=base),
               "score": adapted("bitfit", family, 3, num_labels=1, backbone=base),
               "choice": _multiple_choice(family, 4, "ia3")}
    if family == "bert":
        singles["pooler"] = adapted("hadamard", family, 30, backbone=base, train_pooler=True)
        singles["mean"] = adapted("ia3", family, 31, backbone=base, pooling="mean")
        singles["cls"] = adapted("ia3", family, 32, backbone=base, pooling="cls")
    mt = MultiTaskModel(base)
    for name, model in singles.items():
        mt.add_task(name, model)
    inputs = tiny_inputs(family, batch=2)
    choice_inputs = {k: v.unsqueeze(1).expand(-1, 2, -1).flip(0) for k, v in inputs.items()}  # 2 choices each
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in choice_inputs.items()}
    names = [n for n in singles if n != "choice"]
    rows = {k: torch.cat([inputs[k].repeat(len(names), 1), flat[k]]) for k in inputs}
    tasks = [n for n in names for _ in range(2)] + ["choice"] * 4
    out = mixed(mt, rows, tasks)
    for i, name in enumerate(names):
        want = model_output(singles[name], inputs)
        for row in range(2):
            assert (out.logits[2 * i + row] - want[row]).abs().max() <= TOLERANCE, name
    want = model_output(singles["choice"], choice_inputs)  # (examples, choices)
    got = torch.stack([torch.cat(out.logits[len(names) * 2 + 2 * e: len(names) * 2 + 2 * e + 2]) for e in range(2)])
    assert got.shape == want.shape and (got - want).abs().max() <= TOLERANCE


@pytest.mark.parametrize("num_beams", [1, 3])
def test_t5_generates_each_row_with_its_own_adapter(num_beams: int) -> None:
    singles = {"lora": adapted("lora", "t5", 1), "prompt": adapted("prompt-tuning", "t5", 2),
               "adapter": adapted("compacter", "t5", 3)}
    for model in singles.values():  # visible changes, so that the generations differ between tasks
        with torch.no_grad():
            for name in model.pelt_state.trainable:
                model.get_parameter(name).mul_(20 if "prompt" not in name else 5)
    mt = MultiTaskModel(tiny_model("t5", 0))
    for name, model in singles.items():
        mt.add_task(name, model)
    inputs = tiny_inputs("t5", batch=2)
    rows = {k: inputs[k].repeat(4, 1) for k in ("input_ids", "attention_mask")}
    tasks = ["lora", "lora", "prompt", "prompt", "adapter", "adapter", None, None]
    settings = {"max_new_tokens": 6, "num_beams": num_beams, "do_sample": False}
    got = mt.generate(rows["input_ids"], rows["attention_mask"], tasks=tasks, **settings)
    wanted = []
    with torch.no_grad():
        for model in [*singles.values(), tiny_model("t5", 0)]:
            wanted += list(model.generate(**{k: inputs[k] for k in ("input_ids", "attention_mask")}, **settings))
    width = max(len(w) for w in wanted)
    wanted_padded = torch.stack([torch.nn.functional.pad(w, (0, width - len(w))) for w in wanted])
    assert torch.equal(got[:, :width], wanted_padded)
    assert len({tuple(w.tolist()) for w in wanted}) > 2, "the tasks should generate different texts"


def _deberta_v3_like(method: str | None = None, seed: int = 0, **options) -> torch.nn.Module:
    """DeBERTa-v3's attention: relative positions only, their embeddings normalized and run through each layer's
    query and key projections (share_att_key)."""
    config = tiny_config("deberta-v2")
    config.update({"relative_attention": True, "position_biased_input": False, "max_relative_positions": 16,
                   "pos_att_type": ["p2c", "c2p"], "share_att_key": True, "norm_rel_ebd": "layer_norm"})
    torch.manual_seed(0)
    model = type(tiny_model("deberta-v2"))(config).eval()
    if method:
        pelt.apply_method(model, make_config(method, **{**TINY_OPTIONS.get(method, {}), **options}))
        perturb_trainable(model, seed=seed)
    return model.eval()


def test_relative_positions_keep_each_rows_layout_and_refuse_what_they_share() -> None:
    """Prompts of two lengths, a Hadamard task and rows without a task on DeBERTa-v3-like attention; methods that
    change the modules the shared position embeddings run through are refused in one line."""
    singles = {"long": _deberta_v3_like("prompt-tuning", 1, num_tokens=4),
               "short": _deberta_v3_like("prompt-tuning", 2, num_tokens=2), "had": _deberta_v3_like("hadamard", 3)}
    mt = MultiTaskModel(_deberta_v3_like())
    for name, model in singles.items():
        mt.add_task(name, model)
    inputs = tiny_inputs("deberta-v2", batch=4)
    tasks = ["long", "short", "had", "long"]
    out = mixed(mt, inputs, tasks)
    for row, task in enumerate(tasks):
        assert (out.logits[row] - model_output(singles[task], inputs)[row]).abs().max() <= TOLERANCE
    for method, where in (("lora", "query_proj"), ("bitfit", "query_proj"), ("adapter", "encoder.LayerNorm")):
        with pytest.raises(pelt.PeltError, match=rf"\({method}\) changes .*{where}.*relative-position"):
            mt.add_task(method, _deberta_v3_like(method, 4))
        assert method not in mt.tasks


MERGE_CASES = [(m, f) for m in ("hadamard", "lora", "ia3", "bitfit") for f in ALL_FAMILIES] + \
    [("hadamard-input", "bert")]


@pytest.mark.parametrize("method,family", MERGE_CASES)
def test_merging_one_task_gives_its_outputs_on_the_bare_backbone(method: str, family: str) -> None:
    options = {"placement": "input"} if method == "hadamard-input" else {}
    single = adapted(method.split("-")[0], family, 1, **options)
    mt = MultiTaskModel(tiny_model(family, 0))
    mt.add_task("task", single)
    mt.add_task("other", adapted("adapter", family, 2))
    original = {n: p.detach().clone() for n, p in mt.backbone.named_parameters()}
    inputs = tiny_inputs(family, batch=2)
    unmerged = mixed(mt, inputs, ["task", "task"])
    if family == "t5" and method == "bitfit":  # a bias on T5's LayerNorms has no place in its weights
        with pytest.raises(pelt.PeltError, match="cannot be merged"):
            mt.merge("task")
        assert all(torch.equal(p, original[n]) for n, p in mt.backbone.named_parameters())
        return
    mt.merge("task")
    assert_backbone_untouched(mt)  # merged: the bare backbone runs
    merged = mixed(mt, inputs, ["task", "task"])
    want = model_output(single, inputs)
    for row, got in enumerate(merged.logits):
        assert (got - want[row]).abs().max() <= TOLERANCE
    with pytest.raises(pelt.PeltError, match="merged into it"):
        mixed(mt, inputs, ["task", "other"])
    mt.unmerge()
    restored = dict(mt.backbone.named_parameters())
    assert set(restored) == set(original)
    assert all(torch.equal(restored[n], original[n]) for n in original)
    assert torch.equal(torch.stack(list(mixed(mt, inputs, ["task", "task"]).logits)),
                       torch.stack(list(unmerged.logits)))


def test_merge_refuses_non_linear_adapters() -> None:
    mt = MultiTaskModel(tiny_model("bert", 0))
    mt.add_task("a", adapted("compacter", "bert", 1))
    with pytest.raises(pelt.PeltError, match="cannot be merged"):
        mt.merge("a")


def test_every_shareable_method_declares_its_mixed_batch_form() -> None:
    from pelt.methods.base import Method

    for name in METHODS:
        declares = type(get_method(name)).mixed_batch_ops is not Method.mixed_batch_ops
        assert declares == (name not in REFUSED), name
        assert bool(get_method(name).sharing_refusal) == (name in REFUSED), name


def test_the_layernorm_only_ablation_shares_a_batch() -> None:
    single = adapted("hadamard", "bert", 1, train_weight=False, train_bias=False)
    mt = MultiTaskModel(tiny_model("bert", 0))
    mt.add_task("ln", single)
    inputs = tiny_inputs("bert", batch=2)
    out = mixed(mt, inputs, ["ln", "ln"])
    assert (torch.stack(out.logits) - model_output(single, inputs)).abs().max() <= TOLERANCE


def test_left_padded_rows_with_prompts_are_refused() -> None:
    mt = MultiTaskModel(tiny_model("bert", 0))
    mt.add_task("p", adapted("prompt-tuning", "bert", 1))
    inputs = tiny_inputs("bert", batch=2)
    inputs["attention_mask"] = inputs["attention_mask"].flip(1)
    with pytest.raises(pelt.PeltError, match="padded on the right"):
        mixed(mt, inputs, ["p", None])


def test_an_adapted_model_is_not_a_backbone() -> None:
    with pytest.raises(pelt.PeltError, match="plain base model"):
        pelt.MultiTaskModel(adapted("hadamard", "bert", 1))  # also in pelt's namespace


def test_rows_keep_their_gradients() -> None:
    """With gradients on (attributions through the inputs), every form still computes each row as alone."""
    singles = {m: adapted(m, "bert", i) for i, m in enumerate(("bitfit", "hadamard", "lora", "compacter"), 1)}
    mt = MultiTaskModel(tiny_model("bert", 0))
    for name, model in singles.items():
        mt.add_task(name, model)
    inputs = tiny_inputs("bert", batch=4)
    embeds = mt.backbone.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    out = mt(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], tasks=list(singles))
    torch.stack(out.logits).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    for row, (name, model) in enumerate(singles.items()):
        alone = embeds.detach().clone().requires_grad_(True)
        logits = model(inputs_embeds=alone, attention_mask=inputs["attention_mask"]).logits[row]
        logits.sum().backward()
        assert (out.logits[row] - logits).abs().max() <= TOLERANCE
        assert (embeds.grad[row] - alone.grad[row]).abs().max() <= 1e-4


def test_one_backbone_serves_one_model_at_a_time() -> None:
    import gc

    base = tiny_model("bert", 0)
    first = MultiTaskModel(base)
    first.add_task("a", adapted("bitfit", "bert", 1))
    with pytest.raises(pelt.PeltError, match="serves another MultiTaskModel"):
        MultiTaskModel(base)
    del first
    gc.collect()
    second = MultiTaskModel(base)  # the first one's hooks stay out of the second one's rows
    single = adapted("hadamard", "bert", 2)
    second.add_task("b", single)
    inputs = tiny_inputs("bert", batch=2)
    assert (torch.stack(mixed(second, inputs, ["b", "b"]).logits) - model_output(single, inputs)).abs().max() \
        <= TOLERANCE
