"""`pelt serve` under load: benchmarks/results/serve_load.md.

On the bundled MiniLM with 100 task adapters (hadamard, lora and compacter++ in turn, on SST-2, MRPC and RTE in
turn, weights moved off their init so no two answer alike), a real `pelt serve` process on loopback takes a
bounded closed-loop load: C clients (16, then 64), each sending its next request as soon as the last is
answered, for a fixed time. A request is 4 inputs of one task, drawn from the tasks' dev sets. Measured:

- throughput in examples/s, against the offline mixed-batch throughput of the same model in this process,
  measured just before and just after each load (`MultiTaskModel.predict`, tasks mixed, the server's rows per
  forward pass: on a file sorted by length, and in batches taken in arrival order);
- p50 / p99 latency of a request;
- every answer checked against the offline prediction of its adapter alone on the backbone: wrong and lost
  (no answer, or not 200) counted.

Each load runs twice: alone, then with a stream of bad requests beside it (malformed JSON, a 1.2 MB body, an
unknown task, a client that leaves mid-request, in turn, one every 250 ms) while one adapter is loaded (at a
third of the time) and one unloaded (at two thirds). Then the server is killed with SIGKILL and started again with the same command: the
tasks it serves must be the same.

    python benchmarks/serve_load.py --data-dir ../shared/data                 # 4 x 60 s of load, ~11 minutes
    python benchmarks/serve_load.py --data-dir ../shared/data --seconds 10 --adapters 12   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

# torch and pelt are imported where they are used: the bad clients' process (--bad-stream) needs neither

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "serve_load.md"
TASKS = ["sst2", "mrpc", "rte"]
METHODS = ["hadamard", "lora", "compacter++"]
INPUTS_PER_REQUEST = 4
BATCH = 32  # inputs the server gathers into a batch (its default)
FORWARD = 8  # rows per forward pass within a batch (the server's default on a CPU)


def dev_examples(data_dir: Path, task: str, count: int) -> list[dict[str, str]]:
    from pelt.tasks import get_task

    folder = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}[task]
    path = data_dir / "glue" / folder / "dev.tsv"
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data-dir (the folder holding glue/)")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    fields = get_task(task).text_fields
    columns = {"sst2": {"sentence": "sentence"}, "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String"},
               "rte": {"sentence1": "sentence1", "sentence2": "sentence2"}}[task]
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) == len(header):
            rows.append({f: cells[header.index(columns[f])] for f in fields})
        if len(rows) == count:
            break
    return rows


def make_adapters(folder: Path, count: int) -> dict[str, Path]:
    """`count` adapters as pelt train writes them, trained-looking (moved off their init); kept between runs."""
    import torch

    import pelt
    from pelt.models import load_pretrained
    from pelt.tasks import get_task

    made = {}
    for i in range(count):
        task, method = TASKS[i % len(TASKS)], METHODS[(i // len(TASKS)) % len(METHODS)]
        name = f"{task}-{method}-{i:03d}"
        path = folder / name
        made[name] = path
        if (path / "adapter_config.json").is_file():
            continue
        spec = get_task(task)
        model, _ = load_pretrained(None, spec.num_labels, label_names=list(spec.label_names or []))
        pelt.apply_method(model, pelt.make_config(method))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for tensor_name in model.pelt_state.trainable:
                p = model.get_parameter(tensor_name)
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        pelt.save_adapter(model, path, metadata={"task": task, "label_names": list(spec.label_names),
                                                 "max_length": 128})
    return made


def offline(adapters: dict[str, Path], pool: list[tuple[str, dict]]) -> tuple[dict, Callable[[], dict[str, float]]]:
    """The answers of each (task, input) from its adapter alone on the backbone; and a measurement of the same
    model's offline mixed-batch throughput (examples/s), taken beside each load (A B A B): with every input known
    in advance and sorted by length, as `pelt predict` does with a file, and in batches taken in arrival order
    (each sorted within), as a server gets them."""
    from pelt.multitask import MultiTaskModel

    mt = MultiTaskModel.from_adapters({name: adapters[name] for name in list(adapters)[:1]})
    alone: dict[tuple[str, str], dict] = {}
    for name in adapters:
        if name not in mt.tasks:
            mt.add_task(name, adapters[name])
        examples = [example for task, example in pool if task == name]
        for example, answer in zip(examples, mt.predict(examples, name, batch_size=FORWARD)):
            alone[(name, json.dumps(example, sort_keys=True))] = answer
        mt.remove_task(name)
    for name, path in adapters.items():
        mt.add_task(name, path)
    order = pool[:]
    random.Random(0).shuffle(order)
    examples, names = [e for _, e in order], [t for t, _ in order]
    mt.predict(examples[:BATCH], names[:BATCH], batch_size=FORWARD)  # warm-up

    def rates() -> dict[str, float]:
        start = time.perf_counter()
        mt.predict(examples, names, batch_size=FORWARD)
        middle = time.perf_counter()
        for first in range(0, len(examples), BATCH):
            mt.predict(examples[first:first + BATCH], names[first:first + BATCH], batch_size=FORWARD)
        end = time.perf_counter()
        return {"sorted": len(examples) / (middle - start), "arrival": len(examples) / (end - middle)}
    return alone, rates


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "pelt.cli", "serve", *args], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # type: ignore[union-attr]
        if "on http://" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return process, line.rsplit(" ", 1)[-1].strip()
    raise SystemExit(f"pelt serve did not start (exit {process.wait()})")


def same_answer(got: dict, want: dict) -> bool:
    if got.get("label") != want.get("label"):
        return False
    return all(abs(got["probabilities"][k] - v) < 1e-4 for k, v in want["probabilities"].items())


BAD_EVERY_S = 0.25  # one bad request every 250 ms: each kind once a second, beside ~20 good requests a second


async def bad_requests(url: str, stop: asyncio.Event, seen: dict[str, list[int]]) -> None:
    """Malformed, oversized (1.2 MB), unknown-task and abandoned requests in turn, beside the load."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    oversized = json.dumps({"task": "x", "inputs": [{"sentence": "w " * 600_000}]}).encode()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        kinds = ["malformed", "oversized", "unknown task", "disconnects"]
        i = 0
        while not stop.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            if kind == "malformed":
                reply = await client.post("/v1/predict", content=b'{"task": "x", "inputs": [',
                                          headers={"content-type": "application/json"})
                seen[kind].append(reply.status_code)
            elif kind == "oversized":
                reply = await client.post("/v1/predict", content=oversized,
                                          headers={"content-type": "application/json"})
                seen[kind].append(reply.status_code)
            elif kind == "unknown task":
                reply = await client.post("/v1/predict", json={"task": "nope", "inputs": [{"sentence": "a"}]})
                seen[kind].append(reply.status_code)
            else:
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 500\r\n\r\n{\"task\": \"sst2\", \"in")
                await writer.drain()
                writer.close()
                seen[kind].append(0)
            await asyncio.sleep(BAD_EVERY_S)


async def load(url: str, clients: int, seconds: float, pool: list[tuple[str, dict]], alone: dict,
               admin: dict[str, Any] | None) -> dict[str, Any]:
    """One closed-loop load; with `admin`, the bad-request stream and the adapter load and unload beside it."""
    latencies: list[float] = []
    counts = {"requests": 0, "examples": 0, "wrong": 0, "lost": 0}
    bad: dict[str, list[int]] = {k: [] for k in ("malformed", "oversized", "unknown task", "disconnects")}
    stop = asyncio.Event()
    removed = admin["unload"] if admin else None
    by_task: dict[str, list[dict]] = {}
    for task, example in pool:
        by_task.setdefault(task, []).append(example)

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:
            while not stop.is_set():
                task = rng.choice([t for t in by_task if t != removed])
                inputs = rng.sample(by_task[task], INPUTS_PER_REQUEST)
                started = time.perf_counter()
                try:
                    reply = await client.post("/v1/predict", json={"task": task, "inputs": inputs})
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                counts["requests"] += 1
                if reply.status_code != 200:
                    counts["lost"] += 1
                    continue
                answers = reply.json()["answers"]
                counts["examples"] += len(answers)
                counts["wrong"] += sum(not same_answer(a, alone[(task, json.dumps(e, sort_keys=True))])
                                       for a, e in zip(answers, inputs))

    async def admin_steps(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(seconds / 3)
        reply = await client.post("/admin/tasks", json={"name": admin["load_name"], "path": admin["load_path"]})
        admin["load_status"] = reply.status_code
        await asyncio.sleep(seconds / 3)
        reply = await client.delete(f"/admin/tasks/{admin['unload']}")
        admin["unload_status"] = reply.status_code

    async with httpx.AsyncClient(base_url=url, timeout=60) as admin_client:
        started = time.perf_counter()
        workers = [asyncio.create_task(client_loop(i)) for i in range(clients)]
        side = [asyncio.create_task(admin_steps(admin_client))] if admin else []
        # the bad clients are other clients: their own process, so that a 1.2 MB body being written does not
        # hold up the good clients' event loop
        stream = subprocess.Popen([sys.executable, __file__, "--bad-stream", url, "--seconds", str(seconds)],
                                  stdout=subprocess.PIPE, text=True) if admin else None
        busy_before = busy_seconds(url)
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*workers, *side)
        elapsed = time.perf_counter() - started
        busy = (busy_seconds(url) - busy_before) / elapsed
        if stream is not None:
            bad.update(json.loads(stream.communicate()[0].strip().splitlines()[-1]))
    latencies.sort()
    return {"clients": clients, "disturbed": admin is not None, "seconds": round(elapsed, 1), **counts,
            "server_busy": busy,
            "examples_per_second": counts["examples"] / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
            "bad": {k: sorted(set(v)) for k, v in bad.items()}, "bad_counts": {k: len(v) for k, v in bad.items()},
            "admin": {k: admin.get(k) for k in ("load_status", "unload_status")} if admin else None}


def busy_seconds(url: str) -> float:
    """The time the server's model has spent on batches so far (its pelt_batch_seconds_total metric)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("pelt_batch_seconds_total "))


def run_bad_stream(url: str, seconds: float) -> None:
    """The --bad-stream mode: the bad requests for `seconds`, then their answers as one JSON line."""
    seen: dict[str, list[int]] = {k: [] for k in ("malformed", "oversized", "unknown task", "disconnects")}

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(bad_requests(url, stop, seen))
        await asyncio.sleep(seconds)
        stop.set()
        await task
    asyncio.run(main())
    print(json.dumps(seen))


def tasks_served(url: str) -> list[str]:
    return sorted(t["name"] for t in httpx.get(f"{url}/v1/tasks", timeout=30).json()["tasks"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="the folder holding glue/")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".serve_load")
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--bad-stream", metavar="URL", help=argparse.SUPPRESS)  # the bad clients' own process
    args = parser.parse_args()
    if args.bad_stream:
        return run_bad_stream(args.bad_stream, args.seconds)
    if args.data_dir is None:
        parser.error("--data-dir is required (the folder holding glue/)")

    root = args.work_dir / "adapters"
    adapters = make_adapters(root, args.adapters + len(args.clients))  # the extra ones are loaded at run time
    extra = {name: adapters.pop(name) for name in list(adapters)[args.adapters:]}
    examples = {task: dev_examples(args.data_dir, task, 64) for task in TASKS}
    rng = random.Random(1)
    pool = [(name, example) for name in list(adapters) + list(extra)
            for example in rng.sample(examples[name.split("-")[0]], 8)]
    print(f"offline answers of {len(adapters) + len(extra)} adapters alone, then the mixed-batch throughput", flush=True)
    alone, offline_rates = offline({**adapters, **extra}, pool)
    served_pool = [(t, e) for t, e in pool if t in adapters]

    state = args.work_dir / "state"
    if (state / "tasks.json").exists():
        (state / "tasks.json").unlink()  # each run starts from the command line's adapters
    command = ["--adapters", *(f"{n}={p}" for n, p in adapters.items()), "--adapter-root", str(root),
               "--state-dir", str(state), "--port", "0", "--max-batch-size", str(BATCH), "--max-wait-ms", "5"]
    process, url = start_server(command)
    rows = []
    try:
        for i, clients in enumerate(args.clients):
            extra_name = list(extra)[i]
            unloaded = set(list(adapters)[:i])  # by the loads before this one
            served_now = [(t, e) for t, e in served_pool if t not in unloaded]
            for disturbed in (False, True):  # quiet, then with bad requests and a load and an unload beside
                admin = {"load_name": extra_name, "load_path": extra_name, "unload": list(adapters)[i]} \
                    if disturbed else None
                print(f"load: {clients} clients for {args.seconds:g} s{' (disturbed)' if disturbed else ''}",
                      flush=True)
                before = offline_rates()  # the server idles meanwhile
                row = asyncio.run(load(url, clients, args.seconds, served_now, alone, admin))
                after = offline_rates()
                row["offline"] = {k: (before[k] + after[k]) / 2 for k in before}
                rows.append(row)
                print(json.dumps(row), flush=True)
        served_before = tasks_served(url)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    process, url = start_server(command)
    try:
        after = tasks_served(url)
    finally:
        process.terminate()
        process.wait(30)
    write(rows, served_before, after, args)


def write(rows: list[dict], before: list[str], after: list[str], args: Any) -> None:
    import torch

    lines = ["# `pelt serve` under load", "",
             f"Produced by `python benchmarks/serve_load.py --adapters {args.adapters} --seconds {args.seconds:g}` on "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__} ({torch.get_num_threads()} threads), fp32, CPU. The server and the load "
             "generator share the machine.", "",
             f"{args.adapters} task adapters on the bundled MiniLM (hadamard, lora, compacter++ on SST-2, MRPC and "
             f"RTE in turn); a request is {INPUTS_PER_REQUEST} dev-set inputs of one task; the server batches up "
             f"to {BATCH} inputs or 5 ms and runs each batch sorted by length, {FORWARD} rows per forward pass "
             "(its CPU default). Offline, in the benchmark's process, measured just before and just after each "
             "load (the mean; the server idles meanwhile): the same model's `MultiTaskModel.predict` on the same "
             f"kind of inputs, tasks mixed, {FORWARD} rows per forward pass, with every input known in advance and "
             f"sorted by length (as `pelt predict` does with a file), and in batches of {BATCH} taken in arrival "
             "order, each sorted within (the same batching, without a server).", "",
             "| clients | beside the load | seconds | requests | examples/s | offline sorted / arrival order | "
             "vs offline sorted | vs offline in arrival order | server busy | p50 ms | p99 ms | wrong | lost | "
             "bad requests (answers) | adapter load / unload |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        bad = "; ".join(f"{k} {r['bad_counts'][k]}× → {','.join(map(str, r['bad'][k])) or '–'}"
                        for k in r["bad"]) if r["disturbed"] else "–"
        admin = f"{r['admin']['load_status']} / {r['admin']['unload_status']}" if r["admin"] else "–"
        lines.append(f"| {r['clients']} | {'bad requests, load, unload' if r['disturbed'] else 'nothing'} | "
                     f"{r['seconds']} | {r['requests']:,} | {r['examples_per_second']:.0f} | "
                     f"{r['offline']['sorted']:.0f} / {r['offline']['arrival']:.0f} | "
                     f"{r['examples_per_second'] / r['offline']['sorted']:.2f}× | "
                     f"{r['examples_per_second'] / r['offline']['arrival']:.2f}× | {100 * r['server_busy']:.0f}% | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['wrong']} | {r['lost']} | {bad} | {admin} |")
    lines += ["", "Server busy: the share of the time its model spent on batches (pelt_batch_seconds_total); below "
              "100%, the server waited for the load generator, which shares the 2 cores. `disconnects → 0`: a "
              "client that sends half a body and leaves gets no answer, by design. The bad clients run as a process "
              "of their own.", "",
              f"After `kill -9` and a restart with the same command: {len(after)} tasks served, "
              f"{'the same' if after == before else 'NOT the same'} as before the kill ({len(before)}; the adapters "
              "loaded and unloaded during the load included, from the server's state file).", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    (args.output.with_suffix(".json")).write_text(json.dumps({"rows": rows, "tasks_before_kill": before,
                                                               "tasks_after_restart": after}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
