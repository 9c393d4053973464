"""The architecture table: every site it names exists in a real transformers model of that family."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ALL_FAMILIES, tiny_model
from torch import nn

from pelt.arch import get_arch, is_layer_norm, iter_layers


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_named_site_exists_with_the_right_kind(family: str) -> None:
    model = tiny_model(family)
    refs = list(iter_layers(model, get_arch(model)))
    assert {r.stack.name for r in refs} == ({"encoder", "decoder"} if family == "t5" else {"encoder"})
    for ref in refs:
        for site in dataclasses.fields(ref.stack.sites):
            path = ref.site(site.name)
            if path is None:
                assert site.name.startswith("cross_") and ref.stack.name == "encoder"
                continue
            module = model.get_submodule(path)
            if site.name.endswith("_norm"):
                assert is_layer_norm(module), path
            else:
                assert isinstance(module, nn.Linear), path
