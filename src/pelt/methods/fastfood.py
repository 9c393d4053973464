"""The fast Walsh–Hadamard transform and the Fastfood random projection built on it.

Fastfood (Le et al., 2013) maps R^d → R^D as `S H G Π H B x / c`: B random signs, H the (unnormalised,
Sylvester-ordered) Walsh–Hadamard matrix, Π a random permutation, G Gaussian scales, S keeps the first D of the
N = 2^k entries, c normalises so the projection roughly preserves norms. Cost O(N log N) time and O(N) memory
for the random parts; the dense D × d matrix never exists.
"""

from __future__ import annotations

import functools
import math

import torch

# H_N = H_32 ⊗ … ⊗ H_32 ⊗ H_r: the transform is a few small dense matmuls over reshaped views, which is several
# times faster on CPU than log2(N) elementwise butterfly passes and needs no transposes.
_BLOCK_BITS = 5


@functools.lru_cache(maxsize=None)
def _hadamard_block(bits: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    matrix = torch.ones(1, 1, dtype=dtype)
    for _ in range(bits):
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix.to(device)


def hadamard_matrix(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The explicit Sylvester Hadamard matrix (for tests and small sizes)."""
    return _hadamard_block(_log2(size), dtype, "cpu").clone()


def _log2(size: int) -> int:
    if size < 1 or size & (size - 1):
        raise ValueError(f"the Walsh–Hadamard transform needs a power-of-two size, got {size}")
    return size.bit_length() - 1


def _fwht(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    bits = _log2(n)
    lead = x.shape[:-1]
    after = 1
    while bits > 0:  # one factor of the Kronecker product at a time, least significant first
        step = min(_BLOCK_BITS, bits)
        size = 1 << step
        block = _hadamard_block(step, x.dtype, str(x.device))
        if after == 1:
            x = x.reshape(-1, size) @ block  # one plain GEMM (H is symmetric)
        else:
            x = torch.matmul(block, x.reshape(-1, size, after))
        after *= size
        bits -= step
    return x.reshape(*lead, n)


class _FWHT(torch.autograd.Function):
    """H is symmetric, so the gradient of H x is H applied to the incoming gradient; nothing is saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _fwht(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _fwht(grad)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform along the last dimension (a power of two): x @ H_N."""
    return _FWHT.apply(x)


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class FastfoodProjection:
    """One Fastfood map R^d → R^D whose random parts are regenerated from `seed` (never stored dense).

    The input is zero beyond its first M = 2^⌈log2 d⌉ entries, so the first transform collapses: for
    H_N = H_{N/M} ⊗ H_M, H_N pad(x) is H_M x tiled N/M times, and Π only needs its indices modulo M. What is kept
    is Π mod M (int32) and G (float32): 8 bytes per entry of the padded output, O(N).

    When the output is smaller than the input (N < M), only the first N coordinates of x reach it, as in the
    Fastfood code of Li et al. (2018) that Intrinsic-SAID builds on.
    """

    def __init__(self, in_features: int, out_features: int, seed: int) -> None:
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        self.size = next_power_of_two(out_features)
        self.used = min(in_features, self.size)  # input coordinates that reach the output
        self.in_padded = next_power_of_two(self.used)
        self._parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None = None

    def random_parts(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """B, Π mod M, G and the scale, drawn on first use (so counting parameters costs nothing)."""
        device = torch.device(device)
        if self._parts is None or self._parts[0].device != device:
            g = torch.Generator().manual_seed(self.seed)
            signs = torch.randint(0, 2, (self.in_padded,), generator=g).float() * 2 - 1
            permutation = (torch.randperm(self.size, generator=g) % self.in_padded).to(torch.int32)
            gaussian = torch.randn(self.size, generator=g)
            # E‖H G Π H B x‖² = N · ΣG² · ‖x‖², and S keeps D of the N entries: divide by sqrt(D · ΣG²).
            scale = 1.0 / math.sqrt(self.out_features * float(gaussian.pow(2).sum()))
            self._parts = (signs.to(device), permutation.to(device), gaussian.to(device), scale)
        return self._parts

    def forget(self) -> None:
        """Drop the random parts (a bank keeps its own stacked copy)."""
        self._parts = None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()[..., : self.used]
        return torch.nn.functional.pad(x, (0, self.in_padded - self.used))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        signs, permutation, gaussian, scale = self.random_parts(x.device)
        first = fwht(self._input(x) * signs)  # H_M B x: one tile of H_N B pad(x)
        mixed = torch.index_select(first, -1, permutation) * gaussian  # G Π (H_N B pad(x))
        return fwht(mixed)[..., : self.out_features] * scale

    def dense(self) -> torch.Tensor:
        """The D × d matrix this map multiplies by (tests only: it is what the class exists to avoid)."""
        return self(torch.eye(self.in_features)).T


class FastfoodBank:
    """Many Fastfood maps of one input, one per output size. Maps of the same padded size run as one batch: a
    model has dozens of small tensors (biases, LayerNorms), and one batched transform per size is far cheaper
    than one call each. Output i equals FastfoodProjection(in_features, out_features[i], seeds[i])(x)."""

    def __init__(self, in_features: int, out_features: list[int], seeds: list[int]) -> None:
        self.projections = [FastfoodProjection(in_features, d, s) for d, s in zip(out_features, seeds)]
        self.groups: dict[int, list[int]] = {}
        for index, projection in enumerate(self.projections):
            self.groups.setdefault(projection.size, []).append(index)
        self._stacked: dict[int, tuple[torch.Tensor, ...]] = {}

    def _group_parts(self, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        if size not in self._stacked or self._stacked[size][0].device != device:
            members = [self.projections[i] for i in self.groups[size]]
            parts = [m.random_parts("cpu") for m in members]
            m = members[0].in_padded
            signs = torch.stack([p[0] for p in parts])
            # flat indices into the (k, M) batch of first transforms, so one index_select gathers every row
            offsets = torch.arange(len(members), dtype=torch.int64)[:, None] * m
            permutation = (torch.stack([p[1] for p in parts]).to(torch.int64) + offsets).reshape(-1)
            gaussian = torch.stack([p[2] for p in parts])
            scales = torch.tensor([p[3] for p in parts])[:, None]
            for member in members:
                member.forget()
            index_dtype = torch.int32 if permutation.numel() < 2**31 else torch.int64
            self._stacked[size] = tuple(t.to(device) for t in (signs, permutation.to(index_dtype), gaussian, scales))
        return self._stacked[size]

    def __call__(self, x: torch.Tensor, multipliers: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every projection of x; output i times multipliers[i] if given (applied where it is cheapest: to the
        M-sized first transform, not to the output)."""
        outputs: list[torch.Tensor | None] = [None] * len(self.projections)
        for size, members in self.groups.items():
            signs, permutation, gaussian, scales = self._group_parts(size, x.device)
            if multipliers is not None:
                scales = scales * multipliers[members].unsqueeze(1)
            first = fwht(self.projections[members[0]]._input(x) * signs) * scales  # (k, M)
            mixed = torch.index_select(first.reshape(-1), 0, permutation).view(len(members), size) * gaussian
            transformed = fwht(mixed)
            for row, index in enumerate(members):
                outputs[index] = transformed[row, : self.projections[index].out_features]
        return outputs  # type: ignore[return-value]
