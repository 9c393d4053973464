"""Peak memory of a stretch of code: the CUDA allocator's peak on GPU, the process's peak RSS on CPU."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def _rss_peak_mb() -> float:
    """Peak resident set size (VmHWM) of this process, in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_rss_peak() -> bool:
    """Linux lets a process reset its own peak RSS; without it the peak covers the whole process lifetime."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: `peak_mb` is the peak during the block (CPU: peak RSS, CUDA: peak allocated)."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self.kind = "cuda_max_allocated" if torch.cuda.is_available() else "peak_rss"

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        elif not _reset_rss_peak():
            self.kind = "peak_rss_process"
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            self.peak_mb = round(_rss_peak_mb(), 1)
