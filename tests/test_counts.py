"""Trained-parameter counts of every method on bert-base, roberta-base and deberta-v3-base (meta device, no
download), each written out here from the method's formula (../shared/docs/methods.md) and the model's shapes.

d = 768 hidden, L = 12 layers, 4d = 3,072 FFN, k = 24 bottleneck (reduction factor 32), n = 4 (PHM / Compacter),
r = 8 (LoRA), 100 prompt tokens, d' = 20,000 (Intrinsic-SAID).
"""

from __future__ import annotations

import pytest

from pelt.methods import METHODS, make_config
from pelt.pipeline import count_parameters_for

D, L, FFN, K, N, R = 768, 12, 3072, 24, 4, 8
ADAPTER = 2 * D * K + D + K  # D: d→k and U: k→d, both with bias
LOWRANK = 3 * (D + K)  # each projection a rank-1 product (d + k) plus its bias
PHM = 2 * (N**3 + K * D // N) + D + K  # two PHM layers (own A_i: n³, B_i: kd/n) plus biases
LAYER_BIASES = 4 * D + FFN + D  # query, key, value, attention output; FFN in; FFN out
LN = 2 * D  # a LayerNorm's weight and bias

MODELS = {
    # name: (LayerNorms in the backbone, biases outside the layers, backbone tensors besides the layers', head,
    #        base parameters)
    "bert-base-uncased": (2 * L + 1, D, 3 + 2, D * 2 + 2, 109_482_240),  # the pooler's bias counts as a bias
    "roberta-base": (2 * L + 1, 0, 3 + 2, (D * D + D) + (D * 2 + 2), 124_055_040),  # no pooler; a 2-layer head
    # + the relative-position LayerNorm; no position or token-type embeddings, a relative-position table instead
    "deberta-v3-base": (2 * L + 2, 0, 1 + 2 + 1 + 2, (D * D + D) + (D * 2 + 2), 183_831_552),
}


def expected_counts(model: str) -> dict[str, int]:
    """method -> what the papers count (method weights + the LayerNorms and biases it unfreezes)."""
    norms, outer_biases, outer_tensors, _, base = MODELS[model]
    all_norms = norms * LN
    tensors_per_layer = 6 * 2 + 2 * 2  # six linear layers (weight, bias) and two LayerNorms
    return {
        "hadamard": L * (2 * D) + L * LN,  # W and b per layer, and the LayerNorm after attention
        "adapter": 2 * L * ADAPTER + all_norms,  # Houlsby: after attention and after the FFN
        "pfeiffer": L * ADAPTER + all_norms,
        "adapterdrop": 2 * (L - 5) * ADAPTER + all_norms,  # none in the first 5 layers
        "adapter-lowrank": 2 * L * LOWRANK + all_norms,
        "phm-adapter": 2 * L * PHM + all_norms,
        "compacter": N**3 + 2 * L * LOWRANK + all_norms,  # one shared set of A_i
        "compacter++": N**3 + L * LOWRANK + all_norms,  # one adapter per layer, after the FFN
        "lora": L * 2 * (R * D + D * R),  # A and B at query and value
        "ia3": L * (D + D + FFN),  # keys, values, FFN inner activations
        "bitfit": L * LAYER_BIASES + outer_biases + norms * D,  # every bias, LayerNorm biases included
        "prompt-tuning": 100 * D,
        "intrinsic-said": 20_000 + L * tensors_per_layer + outer_tensors,  # one λ per projected tensor
        "full": base,
    }


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_counts_what_its_formula_says(model: str, method: str) -> None:
    report = count_parameters_for(model, make_config(method))
    assert report.method_total == expected_counts(model)[method], (model, method, report.groups)
    assert report.groups["head"] == MODELS[model][3]
    assert report.base_params == MODELS[model][4]


def test_the_table_covers_every_registered_method() -> None:
    assert set(expected_counts("bert-base-uncased")) == set(METHODS)


def test_lora_and_ia3_on_bert_base_at_their_defaults() -> None:
    assert count_parameters_for("bert-base-uncased", make_config("lora")).method_total == 294_912
    assert count_parameters_for("bert-base-uncased", make_config("ia3")).method_total == 55_296


def test_deberta_v3_base_has_the_published_size() -> None:
    """128,100 × 768 token embeddings, a 512-row relative-position table, two LayerNorms outside the layers, and
    12 layers of four d×d projections, an FFN and two LayerNorms."""
    layer = 4 * (D * D + D) + (D * FFN + FFN) + (FFN * D + D) + 2 * LN
    assert MODELS["deberta-v3-base"][4] == 128_100 * D + 512 * D + 2 * LN + L * layer
