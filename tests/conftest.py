"""Tiny randomly initialised models of every supported family, a tiny tokenizer and tiny GLUE data.

Everything here is built by the tests themselves: no download, no real weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    BertTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

# The real benchmark data, beside the repository (where CI has it too); $PELT_GLUE_DIR / $PELT_SUPERGLUE_DIR override.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

ENCODER_FAMILIES = ["bert", "roberta", "electra", "deberta-v2"]
ALL_FAMILIES = ENCODER_FAMILIES + ["t5"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def _tiny_options() -> dict[str, dict]:
    from pelt.methods import METHODS

    return {name: dict(method.small_model_options) for name, method in METHODS.items() if method.small_model_options}


# Options that fit each method to the tiny models (hidden 32), as each method declares them.
TINY_OPTIONS = _tiny_options()


def tiny_config(family: str, num_labels: int = 2):
    if family == "t5":
        return T5Config(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=3, num_decoder_layers=3,
                        vocab_size=len(VOCAB), decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return AutoConfig.for_model(family, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64,
                                num_labels=num_labels, pad_token_id=0)


def tiny_model(family: str, seed: int = 0, num_labels: int = 2) -> torch.nn.Module:
    """The same seed gives bit-identical weights: a "fresh base model" for round-trip tests."""
    torch.manual_seed(seed)
    config = tiny_config(family, num_labels)
    model = T5ForConditionalGeneration(config) if family == "t5" else AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def tiny_inputs(family: str, batch: int = 3, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(VOCAB), (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "t5":
        inputs["decoder_input_ids"] = torch.randint(5, len(VOCAB), (batch, 4), generator=g)
    return inputs


def with_padding(inputs: dict[str, torch.Tensor], extra: int = 3) -> dict[str, torch.Tensor]:
    """The same inputs with `extra` padding positions appended (arbitrary ids, masked out)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    return {"input_ids": torch.cat([ids, torch.full((ids.shape[0], extra), 7)], 1),
            "attention_mask": torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=mask.dtype)], 1)}


def model_output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def loss_of(model: torch.nn.Module, family: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if family == "t5":
        return model(**inputs, labels=inputs["decoder_input_ids"]).loss
    return model(**inputs, labels=torch.tensor([0, 1, 0][: inputs["input_ids"].shape[0]])).loss


def perturb_trainable(model: torch.nn.Module, seed: int = 3) -> None:
    """Move every trained parameter away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.pelt_state.trainable:
            p = model.get_parameter(name)
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture
def make_model() -> Callable[..., torch.nn.Module]:
    return tiny_model


def word_tokenizer(folder: Path) -> BertTokenizerFast:
    """The tiny models' tokenizer: one word-piece per test word (its vocabulary written into `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)


@pytest.fixture
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tok"))


def write_sst2(folder: Path, train_rows: list[tuple[str, int]], dev_rows: list[tuple[str, int]]) -> Path:
    task = folder / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in rows]
        (task / name).write_text("\n".join(lines) + "\n")
    return folder


def separable_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n sentences whose label is carried by the words used (w5..w49 negative, w50..w94 positive)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        lo = 50 if label else 5
        words = torch.randint(lo, lo + 45, (6,), generator=g).tolist()
        rows.append((" ".join(f"w{w}" for w in words), label))
    return rows


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tokenizer: BertTokenizerFast) -> Path:
    """A saved tiny BERT classifier + tokenizer: what `pelt train --model DIR` loads."""
    folder = tmp_path / "tiny-bert"
    tiny_model("bert").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_glue(tmp_path: Path) -> Path:
    return write_sst2(tmp_path / "glue", separable_rows(32), separable_rows(16, seed=1))


# ---- text to text: a word-level T5 tokenizer whose vocabulary holds every label string --------------------------

T5_LABEL_WORDS = ["entailment", "not_entailment", "neutral", "contradiction", "True", "False", "choice1", "choice2",
                  "positive", "negative", "acceptable", "unacceptable", "equivalent", "not_equivalent", "duplicate",
                  "not_duplicate", "0", "1", "2"] + [f"{i / 5:.1f}" for i in range(26)]
T5_VOCAB = ["<pad>", "</s>", "<unk>"] + T5_LABEL_WORDS + [f"w{i}" for i in range(50)]


def t5_tokenizer():
    """T5's conventions (pad 0, </s> 1 appended to every sequence) on whitespace-separated words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(T5_VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                      vocab_size=len(T5_VOCAB), decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture
def tiny_t5_dir(tmp_path: Path) -> Path:
    """A saved tiny T5 + word-level tokenizer: what `pelt train --model DIR` loads for text to text."""
    folder = tmp_path / "tiny-t5"
    tiny_t5().save_pretrained(folder)
    t5_tokenizer().save_pretrained(folder)
    return folder


def write_jsonl(folder: Path, rows_by_split: dict[str, list[dict]]) -> Path:
    """Official SuperGLUE files: <folder>/train.jsonl, val.jsonl."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def cb_rows(n: int, seed: int = 0) -> list[dict]:
    """CB-format rows whose label is carried by the first word of the premise (w0/w1/w2)."""
    g = torch.Generator().manual_seed(seed)
    names = ["entailment", "contradiction", "neutral"]
    rows = []
    for i in range(n):
        label = i % 3
        words = " ".join(f"w{w}" for w in torch.randint(10, 50, (4,), generator=g).tolist())
        rows.append({"premise": f"w{label} {words}", "hypothesis": words, "label": names[label], "idx": i})
    return rows


# ---- the command line, called in-process ---------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    from pelt.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_bad_input(capsys: pytest.CaptureFixture, argv: list[object], *facts: str) -> str:
    """rc 2, exactly one stderr line 'pelt: error: ...' that contains every fact, and no traceback."""
    rc, out, err = run(capsys, *argv)
    assert "Traceback" not in out + err
    assert rc == 2, (rc, out, err)  # pelt.cli.EXIT_BAD_INPUT
    assert err.endswith("\n"), err
    lines = err.replace("\r", "\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    line = lines[0]
    assert line.startswith("pelt: error: "), line
    for fact in facts:
        assert fact in line, f"{fact!r} not in {line!r}"
    return line
