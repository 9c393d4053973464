"""How simple a map takes each layer's self-attention output before fine-tuning (X) to the one after (Y)
(the Hadamard paper's Fig. 2).

Each function class is fitted per layer on the outputs of training examples and judged on held-out ones: by the
share of the fine-tuning change it leaves unexplained, ‖Y − f(X)‖² / ‖Y − X‖² (1 for doing nothing, 0 for a
perfect fit), by R², and by the task score of the base model with every layer's attention output passed through
its fitted map, the fine-tuned task head on top. If an element-wise map scores like the fine-tuned model, the
Hadamard adapter's premise holds on that model and task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from pelt.errors import PeltError

__all__ = ["FIT_FUNCTIONS", "MappedSublayer", "SublayerMap", "fit_errors", "fit_map", "spectrum"]


class SublayerMap(nn.Module):
    """A fitted map from pre- to post-fine-tuning sublayer outputs (tokens × hidden -> tokens × hidden)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "SublayerMap":
        raise NotImplementedError

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers())


def _centered(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    return x - x_mean, y - y_mean, x_mean, y_mean


class IdentityMap(SublayerMap):
    name, description = "identity", "no map: the base model's outputs as they are"

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "IdentityMap":
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BiasMap(SublayerMap):
    name, description = "bias", "x + b (b per dimension)"

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias.float())

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "BiasMap":
        return cls((y.double() - x.double()).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScalarMap(SublayerMap):
    name, description = "scalar", "a·x + b (one scale a for every dimension, b per dimension)"

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float().reshape(1))
        self.register_buffer("bias", bias.float())

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "ScalarMap":
        xc, yc, x_mean, y_mean = _centered(x, y)
        variance = (xc * xc).sum()
        scale = (xc * yc).sum() / variance if variance > 0 else torch.ones((), dtype=torch.float64)
        return cls(scale, y_mean - scale * x_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias


class _WeightAndBias(SublayerMap):
    """A map given by a weight (vector or matrix) and a bias vector, fixed once fitted."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())


class HadamardMap(_WeightAndBias):
    name, description = "hadamard", "w ⊙ x + b (the Hadamard adapter: a scale and a shift per dimension)"

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "HadamardMap":
        """Least squares per dimension, in closed form; a constant input dimension keeps w = 1."""
        xc, yc, x_mean, y_mean = _centered(x, y)
        variance, covariance = (xc * xc).sum(0), (xc * yc).sum(0)
        constant = variance <= 1e-12 * variance.max().clamp_min(1e-300)
        weight = torch.where(constant, torch.ones_like(variance), covariance / variance.clamp_min(1e-300))
        return cls(weight, y_mean - weight * x_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias


class LinearMap(_WeightAndBias):
    name, description = "linear", "W x + b (a full d×d matrix, least squares)"

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, **options: float) -> "LinearMap":
        xc, yc, x_mean, y_mean = _centered(x, y)
        if xc.shape[0] < xc.shape[1]:
            raise PeltError(f"a full linear fit of {xc.shape[1]} dimensions needs at least that many tokens, got "
                            f"{xc.shape[0]}; capture more examples")
        solution = torch.linalg.lstsq(xc, yc, driver="gelsd").solution  # (d_in, d_out): y ≈ xc @ solution
        return cls(solution.T, y_mean - x_mean @ solution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class MLPMap(SublayerMap):
    name, description = "mlp", "w ⊙ x + b + U·GELU(D x + c) (the Hadamard fit plus a small non-linear residual)"

    def __init__(self, hadamard: HadamardMap, hidden: int, dim: int) -> None:
        super().__init__()
        self.hadamard = hadamard
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.register_buffer("input_scale", torch.ones(1))  # inputs are standardised before the MLP

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, *, hidden: float = 64, steps: float = 400,
            learning_rate: float = 1e-3, batch_size: float = 1024, seed: float = 0, **options: float) -> "MLPMap":
        """The Hadamard fit first (closed form), then the residual MLP by Adam on minibatches (seeded)."""
        generator = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
            torch.manual_seed(int(seed))
            mlp = cls(HadamardMap.fit(x, y), int(hidden), x.shape[1])
        x, y = x.float(), y.float()
        mlp.input_scale.fill_(float(x.std().clamp_min(1e-6)))
        optimizer = torch.optim.Adam([*mlp.down.parameters(), *mlp.up.parameters()], lr=learning_rate)
        with torch.enable_grad():
            for _ in range(int(steps)):
                rows = torch.randint(0, x.shape[0], (min(int(batch_size), x.shape[0]),), generator=generator)
                loss = nn.functional.mse_loss(mlp(x[rows]), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return mlp.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hadamard(x) + self.up(nn.functional.gelu(self.down(x / self.input_scale)))


FIT_FUNCTIONS: dict[str, type[SublayerMap]] = {
    cls.name: cls for cls in (IdentityMap, BiasMap, ScalarMap, HadamardMap, LinearMap, MLPMap)
}


def fit_map(function: str, x: torch.Tensor, y: torch.Tensor, **options: float) -> SublayerMap:
    """Fit one function class to (tokens × hidden) pairs of one layer."""
    if function not in FIT_FUNCTIONS:
        raise PeltError(f"unknown fitting function '{function}'; available: {', '.join(FIT_FUNCTIONS)}")
    if x.shape != y.shape or x.ndim != 2:
        raise PeltError(f"fit X and Y of the same (tokens, hidden) shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return FIT_FUNCTIONS[function].fit(x, y, **options)


def spectrum(outputs: torch.Tensor, top: int = 8) -> dict[str, Any]:
    """The eigenvalues ("characteristic values") of the outputs' covariance over tokens: their mean (the mean
    variance per dimension) and the largest few."""
    centered = outputs.double() - outputs.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centered.T @ centered / max(1, centered.shape[0] - 1)).flip(0)
    return {"mean_eigenvalue": float(eigenvalues.mean()), "top_eigenvalues": [float(v) for v in eigenvalues[:top]]}


@torch.no_grad()
def fit_errors(fitted: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """How well `fitted` maps x to y: the unexplained share of the change, R², and the mean value and covariance
    spectrum of what it puts out (to set beside the fine-tuned outputs' own)."""
    x, y = x.float(), y.float()
    predicted = fitted(x)
    residual = (y - predicted).double().pow(2).sum()
    change = (y - x).double().pow(2).sum()
    spread = (y - y.mean(0)).double().pow(2).sum()
    return {
        "unexplained_change": float(residual / change) if change > 0 else float("nan"),
        "r2": float(1 - residual / spread) if spread > 0 else float("nan"),
        "mean_value": float(predicted.double().mean()),
        **spectrum(predicted),
    }


class MappedSublayer(nn.Module):
    """A sublayer's output projection followed by a fitted map: stands in for fine-tuning that sublayer."""

    def __init__(self, base_layer: nn.Module, fitted: SublayerMap) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fitted = fitted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fitted(self.base_layer(x))
