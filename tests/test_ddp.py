"""Training under torchrun with two CPU processes (gloo): DDP keeps the ranks' adapters identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import separable_rows, write_sst2
from safetensors.torch import load_file

from pelt.adapter_files import WEIGHTS_NAME

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ends_with_identical_adapters(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_sst2(tmp_path / "glue", separable_rows(32), separable_rows(8, seed=1))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), str(tiny_model_dir), str(data), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    # 32 examples, batch 4 per process, 2 processes: 4 steps per epoch, 2 epochs (one process alone: 16)
    assert ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == 8
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # evaluation gathered over both ranks
    weights = [load_file(str(out / f"rank{r}" / WEIGHTS_NAME)) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    saved = load_file(str(out / "adapter" / WEIGHTS_NAME))  # rank 0 wrote the best checkpoint, once
    scales = [t for name, t in weights[0].items() if "hadamard" in name and name.endswith("weight")]
    assert scales and not all(torch.equal(t, torch.ones_like(t)) for t in scales), "the adapter did not train"
    assert saved.keys() == weights[0].keys()
    assert (out / "results.json").exists()


RELEASE_CHECK = """
import sys, torch.distributed as dist
import pelt.cli as cli
ports, out = sys.argv[1:4], sys.argv[4]

def starting_a_group(command, port):
    def run(args):  # as accelerate does when training under torchrun
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + port, rank=0, world_size=1)
        command(args)
    return run

methods, train = cli._methods, cli._train
cli._methods, cli._train = starting_a_group(methods, ports[0]), starting_a_group(train, ports[1])
for argv, code in ((["methods"], 0), (["train", "--task", "no-such-task", "--output-dir", out], 2)):
    assert cli.main(argv) == code, argv
    print(argv[0], dist.is_initialized())
cli._methods = methods
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + ports[2], rank=0, world_size=1)
assert cli.main(["methods"]) == 0
print("caller's group", dist.is_initialized())
dist.destroy_process_group()
"""


def test_the_cli_tears_down_the_process_group_it_started_and_only_that(tmp_path: Path) -> None:
    """Under torchrun the CLI leaves no process group of its own for the interpreter's exit to abort on, whether
    the command succeeded or failed on bad input; a group its caller started stays the caller's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ports = [str(_free_port()) for _ in range(3)]
    done = subprocess.run([sys.executable, "-c", RELEASE_CHECK, *ports, str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    states = [line for line in done.stdout.splitlines() if line.endswith((" True", " False"))]
    assert states == ["methods False", "train False", "caller's group True"]
