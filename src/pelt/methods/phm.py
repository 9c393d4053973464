"""PHM and LPHM linear layers: weights that are sums of Kronecker products (Karimi Mahabadi et al., 2021).

`W = Σ_i A_i ⊗ B_i` with `A_i ∈ R^{n×n}` and `B_i ∈ R^{(out/n)×(in/n)}` costs `n³ + in·out/n` parameters instead
of `in·out`; the low-rank variant (LPHM) factors each `B_i = s_i t_iᵀ` with rank r, costing `r(in + out)`.
The `A_i` ("rule") may be one tensor shared by many layers (Compacter's slow weights): it then lives in one
`SharedRule` module, registered once in the model, that every layer reads at each call.

`y = W x` can be computed two ways: materialize `W` once per call and run one matmul, or never build it and
contract the input block-wise (`(A ⊗ B) vec(X) = vec(B X Aᵀ)`). Which is faster depends on the
layer's shape; `path="auto"` picks by the rule fitted to `benchmarks/phm_layer.py` (see `prefer_factored`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pelt.errors import PeltError

Path = Literal["auto", "materialized", "factored"]
PATHS = ("auto", "materialized", "factored")


def check_divisible(n: int, **dims: int) -> None:
    """n must divide every dimension of a PHM layer: say which one does not, and which n would fit all."""
    if n < 1:
        raise PeltError(f"n (the number of Kronecker terms) must be at least 1, got {n}")
    for name, value in dims.items():
        if value % n:
            fitting = [m for m in range(1, min(dims.values()) + 1) if all(v % m == 0 for v in dims.values())]
            sizes = " and ".join(f"{k} ({v})" for k, v in dims.items())
            raise PeltError(
                f"n={n} does not divide the {name} ({value}); n must divide the {sizes}: "
                f"choose n from {', '.join(map(str, fitting))}"
                + (" or change the bottleneck" if "bottleneck" in dims else "")
            )


def new_rule(n: int, init_std: float, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> nn.Parameter:
    """The n matrices A_i (n×n each), normal(0, init_std), as one (n, n, n) parameter."""
    rule = torch.empty(n, n, n, device=device, dtype=dtype)
    nn.init.normal_(rule, std=init_std)
    return nn.Parameter(rule)


def _glorot_uniform_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(tensor, -bound, bound)


def prefer_factored(in_features: int, out_features: int, n: int, rank: int | None, device_type: str = "cpu") -> bool:
    """Whether the factored product beats materializing W (fitted to benchmarks/results/phm_layer_cpu.md).

    Full-rank B: the factored product needs the same `in·out` multiply-adds per token as the dense matmul, in
    two thinner steps, so materializing (n·in·out once per call) always wins (by 5-50× on CPU).
    Low-rank B: the factored product needs `n·r·(in + out) + n³·r` per token instead of `in·out`. Measured, it
    wins only for down-projections (in > out) large enough (in·out ≥ 16k) with at least 5× fewer
    multiply-adds; expanding projections (k → d) were never faster factored, their three thin contractions
    write more than they save. Other devices were not measured: they take the materialized path, the
    reference implementation's.
    """
    if device_type != "cpu" or rank is None or in_features <= out_features:
        return False
    dense = in_features * out_features
    factored = n * rank * (in_features + out_features) + n**3 * rank
    return dense >= FACTORED_MIN_DENSE and dense / factored >= FACTORED_MIN_SAVING


# Thresholds of `prefer_factored`, from the CPU micro-benchmark (4,096 tokens; no GPU was measured).
FACTORED_MIN_DENSE = 16_384
FACTORED_MIN_SAVING = 5.0


class SharedRule(nn.Module):
    """The A_i of many PHM layers, registered once in the model (so state dicts and saves hold it once)."""

    def __init__(self, n: int, init_std: float, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_divisible(n)
        self.phm_rule = new_rule(n, init_std, device=device, dtype=dtype)


class PHMLinear(nn.Module):
    """`y = (Σ_i A_i ⊗ B_i) x + b`; `rank=None` is a PHM layer, `rank=r` an LPHM layer (`B_i = s_i t_iᵀ`).

    Pass `shared` to use the A_i of a `SharedRule` registered elsewhere in the model; otherwise the layer owns
    its A_i.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n: int,
        *,
        rank: int | None = None,
        shared: SharedRule | None = None,
        rule_init_std: float = 0.01,
        bias: bool = True,
        path: Path = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_divisible(n, input_size=in_features, output_size=out_features)
        if rank is not None and rank < 1:
            raise PeltError(f"rank must be at least 1, got {rank}")
        if path not in PATHS:
            raise PeltError(f"path must be one of {', '.join(PATHS)}, got '{path}'")
        self.in_features, self.out_features, self.n, self.rank, self.path = in_features, out_features, n, rank, path
        factory = {"device": device, "dtype": dtype}
        out_block, in_block = out_features // n, in_features // n
        if shared is None:
            self.phm_rule = new_rule(n, rule_init_std, **factory)
            self._shared: tuple[SharedRule, ...] = ()
        elif tuple(shared.phm_rule.shape) != (n, n, n):
            raise PeltError(f"a shared rule for n={n} must have shape ({n}, {n}, {n}), "
                            f"got {tuple(shared.phm_rule.shape)}")
        else:
            self._shared = (shared,)  # a tuple: referenced, not registered as a submodule
        if rank is None:
            self.phm_weight = nn.Parameter(torch.empty(n, out_block, in_block, **factory))
            _glorot_uniform_(self.phm_weight, in_block, out_block)
        else:
            # B_i = s_i t_iᵀ: s_i (out/n × r), t_i (in/n × r), Glorot-initialised as the Compacter authors do.
            self.phm_left = nn.Parameter(torch.empty(n, out_block, rank, **factory))
            self.phm_right = nn.Parameter(torch.empty(n, in_block, rank, **factory))
            _glorot_uniform_(self.phm_left, rank, out_block)
            _glorot_uniform_(self.phm_right, in_block, rank)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    def extra_repr(self) -> str:
        kind = "PHM" if self.rank is None else f"LPHM rank={self.rank}"
        return f"{self.in_features} -> {self.out_features}, n={self.n}, {kind}, path={self.path}"

    def rule(self) -> torch.Tensor:
        """The (n, n, n) tensor of the A_i: this layer's own, or the shared one."""
        return self._shared[0].phm_rule if self._shared else self.phm_rule

    def blocks(self) -> torch.Tensor:
        """The n matrices B_i, shape (n, out/n, in/n)."""
        if self.rank is None:
            return self.phm_weight
        return self.phm_left @ self.phm_right.transpose(1, 2)

    def dense_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix Σ_i kron(A_i, B_i)."""
        n = self.n
        b = self.blocks()
        # kron(A, B)[a·P + p, c·Q + q] = A[a, c] · B[p, q]
        rule = self.rule().to(dtype=b.dtype, device=b.device)  # a shared rule may sit elsewhere
        w = torch.einsum("iac,ipq->apcq", rule, b)
        return w.reshape(n * b.shape[1], n * b.shape[2])

    def uses_factored(self, device_type: str = "cpu") -> bool:
        if self.path == "auto":
            return prefer_factored(self.in_features, self.out_features, self.n, self.rank, device_type)
        return self.path == "factored"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_factored(x.device.type):
            return F.linear(x, self.dense_weight(), self.bias)
        lead = x.shape[:-1]
        blocks = x.reshape(*lead, self.n, self.in_features // self.n)  # (..., c, q)
        weights = self.phm_weight if self.rank is None else self.phm_left
        rule = self.rule().to(dtype=weights.dtype, device=weights.device)  # (i, a, c)
        if self.rank is None:
            mixed = torch.einsum("iac,...cq->...iaq", rule, blocks)
            y = torch.einsum("ipq,...iaq->...ap", self.phm_weight, mixed)
        else:
            projected = torch.einsum("...cq,iqr->...icr", blocks, self.phm_right)
            mixed = torch.einsum("iac,...icr->...iar", rule, projected)
            y = torch.einsum("ipr,...iar->...ap", self.phm_left, mixed)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


class LPHMLinear(PHMLinear):
    """The low-rank PHM layer (`B_i = s_i t_iᵀ`), rank 1 by default as in Compacter."""

    def __init__(self, in_features: int, out_features: int, n: int, *, rank: int = 1, **kwargs) -> None:
        super().__init__(in_features, out_features, n, rank=rank, **kwargs)
