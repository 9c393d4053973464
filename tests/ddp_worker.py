"""Launched by test_ddp.py under torchrun: trains a tiny Hadamard adapter with DDP on CPU (gloo), then every rank
writes its own copy of the trained weights and what it saw, so the test can compare the ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

import pelt
from pelt.models import load_pretrained
from pelt.tasks import get_task, load_splits
from pelt.train import TrainConfig, formulation_for, train_model


def main(model_dir: str, data_dir: str, out: str) -> None:
    spec = get_task("sst2")
    model, tokenizer = load_pretrained(model_dir, spec.num_labels)
    pelt.apply_method(model, pelt.HadamardConfig())
    config = TrainConfig(output_dir=out, epochs=2, learning_rate=1e-2, batch_size=4, warmup_steps=0,
                         recipe="joint", logging_steps=1000)
    formulation = formulation_for(spec, model.config, tokenizer, 32)
    results = train_model(model, formulation, load_splits(spec, data_dir), config)
    rank = dist.get_rank()
    pelt.save_adapter(model, Path(out) / f"rank{rank}")
    seen = {"rank": rank, "world_size": dist.get_world_size(), "backend": dist.get_backend(),
            "optimizer_steps": results["optimizer_steps"], "metrics": results["metrics"]}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))
    # Tear the gloo group down before the interpreter does: left to exit, a rank can abort
    # ("terminate called without an active exception") after its work is done.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
