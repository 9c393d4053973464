"""`pelt serve`: a real server on a loopback port, real HTTP clients; answers equal to each adapter alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import tiny_model, word_tokenizer
from test_predict import EXAMPLES, assert_answers_match, expected, make_adapter

from pelt.errors import PeltError
from pelt.serve import ServerSettings, TaskServer, serving_in_thread
from pelt.serve.server import STATE_FILE

STARTUP = {"sst2": "hadamard", "mrpc": "lora", "stsb": "bitfit", "copa": "compacter"}
OPTIONS = {"compacter": {"bottleneck": 8}}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny BERT; four adapters served from the start; under an adapter root, one more (rte) and a copy of sst2's."""
    base = tmp_path_factory.mktemp("serve")
    model_dir = base / "tiny-bert"
    tiny_model("bert").save_pretrained(model_dir)
    tokenizer = word_tokenizer(base / "tok")
    tokenizer.save_pretrained(model_dir)
    root = base / "root"
    folders, models = {}, {}
    for seed, (task, method) in enumerate(STARTUP.items(), start=1):
        folders[task] = base / f"{task}-adapter"
        models[task] = make_adapter(folders[task], model_dir, task, method, seed, **OPTIONS.get(method, {}))
    models["rte"] = make_adapter(root / "rte", model_dir, "rte", "lora", seed=9)
    (root / "not-an-adapter").mkdir()
    outside = base / "outside"
    make_adapter(outside, model_dir, "sst2", "hadamard", seed=11)
    (root / "escape").symlink_to(outside)
    (root / "linked").mkdir()  # a folder under the root whose files lead out of it
    for file in outside.iterdir():
        (root / "linked" / file.name).symlink_to(file)
    return {"base": base, "model": model_dir, "tokenizer": tokenizer, "folders": folders, "models": models,
            "root": root}


def settings(made: dict, **changes) -> ServerSettings:
    values = {"port": 0, "adapter_root": str(made["root"]), "state_dir": None, "max_wait_ms": 50.0} | changes
    return ServerSettings(**values)


def want(made: dict, task: str, example: dict) -> dict:
    return expected(made["models"][task], made["tokenizer"], task, example)


def post(client: httpx.Client, url: str, body: dict) -> httpx.Response:
    return client.post(url, json=body, timeout=30)


def test_concurrent_requests_of_several_tasks_share_forward_passes_and_get_their_own_answers(made, tmp_path):
    requests = [(task, [example]) for _ in range(3) for task, examples in EXAMPLES.items() for example in examples]
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "state"), max_wait_ms=200)) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(len(requests)) as pool:  # all at once: they wait for each other in the batcher
            replies = list(pool.map(lambda r: post(client, "/v1/predict", {"task": r[0], "inputs": r[1]}), requests))
        for (task, inputs), reply in zip(requests, replies):
            assert reply.status_code == 200, reply.text
            assert reply.json()["task"] == task
            [answer] = reply.json()["answers"]
            assert_answers_match(answer, want(made, task, inputs[0]))
        metrics = client.get("/metrics").text
        passes = _metric(metrics, "pelt_batch_examples_count")
        assert _metric(metrics, "pelt_batch_examples_sum") == len(requests)
        assert passes < len(requests) / 2, f"{len(requests)} requests took {passes} forward passes: not batched"
        several = post(client, "/v1/predict", {"task": "sst2", "inputs": EXAMPLES["sst2"] + [{"sentence": "w9",
                                                                                              "id": "x"}]})
        answers = several.json()["answers"]
        assert [a.get("id") for a in answers] == [None, None, None, "x"]  # in order, ids echoed
        for example, answer in zip(EXAMPLES["sst2"], answers):
            assert_answers_match(answer, want(made, "sst2", example))


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_tasks_health_metrics_and_the_openapi_description(made, tmp_path):
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "s"))) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        assert {n: t["method"] for n, t in tasks.items()} == STARTUP
        assert tasks["sst2"]["labels"] == ["negative", "positive"] and tasks["sst2"]["fields"] == ["sentence"]
        assert tasks["sst2"]["trained_parameters"] == 3 * 4 * 32 + 32 * 2 + 2  # W, b, LN of 3 layers + classifier
        assert tasks["copa"]["kind"] == "multiple-choice"
        assert client.get("/health").json()["tasks"] == 4
        post(client, "/v1/predict", {"task": "sst2", "inputs": EXAMPLES["sst2"]})
        metrics = client.get("/metrics").text
        assert 'pelt_requests_total{endpoint="/v1/predict",status="200"} 1.0' in metrics
        assert 'pelt_examples_total{task="sst2"} 3.0' in metrics
        assert "pelt_request_seconds_bucket" in metrics and "pelt_tasks 4.0" in metrics
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/predict", "/v1/tasks", "/health", "/metrics", "/admin/tasks", "/admin/tasks/{name}"} <= set(paths)


def test_an_adapter_loads_and_unloads_while_others_are_served(made, tmp_path):
    state = tmp_path / "state"
    stop, failures, answered = threading.Event(), [], [0]

    def keep_asking(url: str) -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                reply = post(client, "/v1/predict", {"task": "sst2", "inputs": EXAMPLES["sst2"][:1]})
                if reply.status_code != 200:
                    failures.append(reply.text)
                    continue
                try:
                    assert_answers_match(reply.json()["answers"][0], want(made, "sst2", EXAMPLES["sst2"][0]))
                    answered[0] += 1
                except AssertionError as error:
                    failures.append(str(error))

    with TaskServer(made["folders"], settings(made, state_dir=str(state))) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        asking = threading.Thread(target=keep_asking, args=(url,))
        asking.start()
        try:
            loaded = post(client, "/admin/tasks", {"name": "rte", "path": "rte"})
            assert loaded.status_code == 201, loaded.text
            assert loaded.json()["task"]["method"] == "lora"
            pair = {"sentence1": "w5 w6", "sentence2": "w7"}
            reply = post(client, "/v1/predict", {"task": "rte", "inputs": [pair]})
            assert_answers_match(reply.json()["answers"][0], want(made, "rte", pair))
            recorded = json.loads((state / STATE_FILE).read_text())["added"]
            assert recorded == {"rte": str((made["root"] / "rte").resolve())}
            assert client.delete("/admin/tasks/rte").status_code == 200
            assert client.delete("/admin/tasks/mrpc").status_code == 200  # a startup task
            gone = post(client, "/v1/predict", {"task": "rte", "inputs": [pair]})
            assert gone.status_code == 404 and "unknown task 'rte'" in gone.json()["error"]
            time.sleep(0.3)
        finally:
            stop.set()
            asking.join()
        assert not failures and answered[0] > 0
        assert json.loads((state / STATE_FILE).read_text()) == {"added": {}, "removed": ["mrpc"]}
    # the same state folder after a restart: mrpc stays unloaded, said in a line
    lines: list[str] = []
    with TaskServer(made["folders"], settings(made, state_dir=str(state)), log=lines.append) as again:
        assert set(again.model.tasks) == {"sst2", "stsb", "copa"}
        assert any("mrpc was unloaded through the admin API" in line for line in lines)


def test_a_startup_task_unloaded_and_loaded_again_from_elsewhere_survives_restarts(made, tmp_path):
    """The state keeps a startup name unloaded, and serves what was loaded under it instead, restart after
    restart; unloading that one too leaves the name unserved."""
    config = settings(made, state_dir=str(tmp_path / "state"))
    startup = {"sst2": made["folders"]["sst2"], "mrpc": made["folders"]["mrpc"]}
    with TaskServer(startup, config) as server:
        server.unload("sst2").result(30)
        server.load("sst2", "rte").result(30)  # another adapter under the startup name
    with TaskServer(startup, config, log=lambda line: None) as again:
        assert again.model.tasks["sst2"].method == "lora"  # the run-time adapter, not the startup hadamard
        assert Path(again.model.tasks["sst2"].source).resolve() == (made["root"] / "rte").resolve()
        again.unload("sst2").result(30)
    with TaskServer(startup, config, log=lambda line: None) as third:
        assert set(third.model.tasks) == {"mrpc"}


def test_a_request_checked_before_its_task_was_unloaded_gets_unknown_task(made, tmp_path):
    """The worker held up, an unload queued, then a request for that task (checked while it was still loaded):
    the unload runs first, and the request is answered with the error, not with another task's answer."""
    from pelt.serve.server import UnknownTask

    gate = threading.Event()
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "s"))) as server:
        held = server.batcher.exclusive(gate.wait)
        unloading = server.unload("sst2")
        asked = server.predict("sst2", EXAMPLES["sst2"][:1])
        other = server.predict("mrpc", EXAMPLES["mrpc"][:1])
        gate.set()
        held.result(10), unloading.result(10)
        with pytest.raises(UnknownTask, match="unknown task 'sst2': it was unloaded"):
            asked.result(10)
        assert_answers_match(other.result(10)[0], want(made, "mrpc", EXAMPLES["mrpc"][0]))


def test_a_run_time_adapter_gone_since_is_skipped_with_a_line(made, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(made["root"] / "rte", root / "rte")
    config = ServerSettings(port=0, adapter_root=str(root), model=str(made["model"]))
    with TaskServer(made["folders"], config) as server:
        server.load("rte", "rte").result(30)
    shutil.rmtree(root / "rte")
    lines: list[str] = []
    with TaskServer({}, config, log=lines.append) as again:  # no startup adapters: the backbone from --model
        assert again.model.tasks == {}
        assert any("task rte" in line and "is not served" in line for line in lines), lines
    with pytest.raises(PeltError, match="in use by another pelt serve"):
        with TaskServer({}, config), TaskServer({}, config):
            pass
    closed = TaskServer(made["folders"], settings(made))
    closed.close()
    with pytest.raises(PeltError, match="the server is stopping"):
        closed.predict("sst2", EXAMPLES["sst2"][:1])


def _raw(url: str, data: bytes) -> tuple[int, dict]:
    """A request as bytes (what a broken client sends), its status and JSON answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = b""
        while chunk := sock.recv(65536):
            chunks += chunk
    head, _, body = chunks.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def test_every_bad_request_gets_a_4xx_naming_what_is_wrong(made, tmp_path):
    limits = {"max_inputs": 4, "max_text_chars": 100, "max_body_bytes": 5000}
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "s"), **limits)) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        def refused(status: int, fact: str, *, body=None, content=None, method="POST", path="/v1/predict"):
            reply = client.request(method, path, json=body, content=content, timeout=30,
                                   headers={"content-type": "application/json"})
            assert reply.status_code == status, (reply.status_code, reply.text)
            assert fact in reply.json()["error"], reply.json()
        refused(400, "the body is not valid JSON", content=b'{"task": "sst2", "inputs": [')
        refused(422, "the body must be a JSON object", content=b'[1, 2]')
        refused(422, "field 'task' is missing", body={"inputs": []})
        refused(422, "field 'inputs' is missing", body={"task": "sst2"})
        refused(422, "unknown field 'input'", body={"task": "sst2", "inputs": [], "input": []})
        refused(422, "inputs.0: Input should be a valid dictionary", body={"task": "sst2", "inputs": ["text"]})
        refused(422, "'inputs' is empty", body={"task": "sst2", "inputs": []})
        refused(404, "unknown task 'sst3'; loaded tasks: copa, mrpc, sst2, stsb", body={"task": "sst3", "inputs": [{}]})
        refused(422, "inputs[1]: missing field 'sentence2' for task mrpc (it takes sentence1, sentence2)",
                body={"task": "mrpc", "inputs": [EXAMPLES["mrpc"][0], {"sentence1": "w5"}]})
        refused(422, "inputs[0]: field 'sentence' must be a non-empty string", body={"task": "sst2",
                                                                                    "inputs": [{"sentence": 3}]})
        refused(413, "5 inputs, over this server's limit of 4", body={"task": "sst2",
                                                                      "inputs": [{"sentence": "w5"}] * 5})
        refused(413, "inputs[0].sentence: 101 characters, over this server's limit of 100",
                body={"task": "sst2", "inputs": [{"sentence": "w" * 101}]})
        refused(413, "the request body is over this server's limit of 5,000 bytes",
                body={"task": "sst2", "inputs": [{"sentence": "w5 " * 2000}]})
        refused(404, "Not Found", method="GET", path="/v2/predict")
        refused(405, "Method Not Allowed", method="GET", path="/v1/predict")
        refused(403, "lies outside the adapter root", path="/admin/tasks",
                body={"name": "x", "path": "../sst2-adapter"})
        refused(403, "lies outside the adapter root", path="/admin/tasks", body={"name": "x", "path": "escape"})
        refused(403, "lies outside the adapter root", path="/admin/tasks",
                body={"name": "x", "path": str(made["folders"]["sst2"])})
        refused(403, "leads outside the adapter root", path="/admin/tasks",
                body={"name": "x", "path": "linked"})
        refused(422, "no adapter there", path="/admin/tasks", body={"name": "x", "path": "not-an-adapter"})
        refused(422, "adapter path", path="/admin/tasks", body={"name": "x", "path": "a\u0000b"})
        refused(422, "inputs[0].id: nan cannot be echoed back in JSON",
                content=b'{"task": "sst2", "inputs": [{"sentence": "w5", "id": NaN}]}')
        refused(409, "a task named 'sst2' is loaded already", path="/admin/tasks", body={"name": "sst2", "path": "rte"})
        refused(422, "a task name is 1 to 100 letters, digits", path="/admin/tasks",
                body={"name": "a/b", "path": "rte"})
        refused(404, "unknown task 'nope'", method="DELETE", path="/admin/tasks/nope")
        # a body longer than its Content-Length says, and a client that leaves mid-body: the server goes on
        status, answer = _raw(url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 99999999\r\nConnection: close\r\n\r\n{")
        assert status == 413 and "over this server's limit" in answer["error"]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"task\": \"sst2\", \"inp")
        reply = post(client, "/v1/predict", {"task": "sst2", "inputs": EXAMPLES["sst2"][:2]})
        assert reply.status_code == 200 and client.get("/health").json()["status"] == "ok"


def test_a_request_past_its_time_gets_408_and_the_server_goes_on(made, tmp_path):
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "s"), max_wait_ms=1000,
                                              request_timeout_s=0.1)) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        reply = post(client, "/v1/predict", {"task": "sst2", "inputs": EXAMPLES["sst2"][:1]})
        assert reply.status_code == 408 and "no answer within 0.1 s" in reply.json()["error"]
        time.sleep(1.2)
        assert client.get("/health").status_code == 200


def test_admin_loading_needs_an_adapter_root(made, tmp_path):
    with TaskServer(made["folders"], settings(made, adapter_root=None)) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        reply = post(client, "/admin/tasks", {"name": "rte", "path": str(made["root"] / "rte")})
        assert reply.status_code == 403 and "start it with --adapter-root" in reply.json()["error"]


def test_an_api_key_is_required_on_every_request_when_set(made, tmp_path):
    with TaskServer(made["folders"], settings(made, state_dir=str(tmp_path / "s"), api_key="s3cret")) as server, \
            serving_in_thread(server) as url, httpx.Client(base_url=url) as client:
        body = {"task": "sst2", "inputs": EXAMPLES["sst2"][:1]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
            for method, path in (("POST", "/v1/predict"), ("GET", "/health"), ("GET", "/openapi.json"),
                                 ("DELETE", "/admin/tasks/sst2")):
                reply = client.request(method, path, json=body if method == "POST" else None, headers=headers)
                assert reply.status_code == 401 and "API key" in reply.json()["error"], (headers, path)
        assert client.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1/tasks", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert len(server.model.tasks) == 4  # the refused DELETE removed nothing


def test_a_batch_is_the_oldest_input_and_the_waiting_ones_nearest_its_length():
    from pelt.serve.batcher import Batcher, PredictJob, _inputs

    batcher = Batcher(lambda items: [{} for _ in items], max_batch_size=3, max_wait_s=0.0)
    try:
        first = PredictJob("t", [{"sentence": "w" * n} for n in (50, 10)])
        second = PredictJob("t", [{"sentence": "w" * n} for n in (48, 200, 53, 49)])
        backlog = _inputs(first) + _inputs(second)
        batch = batcher._choose(backlog)
        assert [u.length for u in batch] == [50, 48, 49]  # the oldest input, then the two nearest, in order
        assert [u.length for u in backlog] == [10, 200, 53]  # the rest keep their order
        assert [u.length for u in batcher._choose(backlog)] == [10, 200, 53]
        cancelled = PredictJob("t", [{"sentence": "w"}])
        cancelled.future.cancel()  # timed out while waiting
        backlog = _inputs(cancelled) + _inputs(PredictJob("t", [{"sentence": "ww"}]))
        assert [u.length for u in batcher._choose(backlog)] == [2]
    finally:
        batcher.close()


def test_a_request_is_answered_once_all_its_inputs_are_whatever_the_batches():
    from pelt.serve.batcher import Batcher, PredictJob

    seen: list[int] = []

    def answer(items):
        seen.append(len(items))
        return [{"echo": example["sentence"]} for _, example in items]
    batcher = Batcher(answer, max_batch_size=2, max_wait_s=0.05)
    try:
        jobs = [PredictJob("t", [{"sentence": f"{j}-{i}"} for i in range(n)]) for j, n in enumerate((3, 1, 4))]
        futures = [batcher.submit(job) for job in jobs]
        results = [future.result(10) for future in futures]
        assert results == [[{"echo": f"{j}-{i}"} for i in range(n)] for j, n in enumerate((3, 1, 4))]
        assert max(seen) <= 2 and sum(seen) == 8
    finally:
        batcher.close()


def test_settings_refuse_an_open_bind_without_a_key_and_bad_limits():
    with pytest.raises(PeltError, match="--host 0.0.0.0 is not a loopback address.*--api-key"):
        ServerSettings(host="0.0.0.0").validate()
    ServerSettings(host="0.0.0.0", api_key="k").validate()
    ServerSettings(host="::1").validate()
    ServerSettings(host="localhost").validate()
    with pytest.raises(PeltError, match="max_inputs must be a positive integer, got 0"):
        ServerSettings(max_inputs=0).validate()
    with pytest.raises(PeltError, match="request_timeout_s must be a finite number above 0, got inf"):
        ServerSettings(request_timeout_s=float("inf")).validate()
    with pytest.raises(PeltError, match="request_timeout_s must be a finite number above 0, got 0"):
        ServerSettings(request_timeout_s=0).validate()
    with pytest.raises(PeltError, match="the API key must be printable ASCII with no spaces around it"):
        ServerSettings(api_key=" key").validate()
    with pytest.raises(PeltError, match="max_wait_ms must be a finite number at least 0, got -1"):
        ServerSettings(max_wait_ms=-1).validate()
    ServerSettings(max_wait_ms=0).validate()


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, list[str]]:
    """`pelt serve` in its own process; its address from the line it prints, the rest of its stderr collected."""
    process = subprocess.Popen([sys.executable, "-m", "pelt.cli", "serve", *args], stderr=subprocess.PIPE,
                               text=True, env=env)
    lines: list[str] = []
    for line in process.stderr:  # type: ignore[union-attr]
        lines.append(line)
        if "serving" in line and "on http://" in line:
            threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
            return process, line.rsplit(" ", 1)[-1].strip(), lines
    process.wait()
    raise AssertionError(f"pelt serve did not start: {''.join(lines)}")


def test_the_cli_serves_and_a_killed_server_comes_back_with_the_same_tasks(made, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["--adapters", *(f"{t}={f}" for t, f in made["folders"].items()), "--adapter-root", str(made["root"]),
            "--state-dir", str(tmp_path / "state"), "--port", "0"]
    process, url, _ = _start(args, env)
    try:
        with httpx.Client(base_url=url) as client:
            assert post(client, "/admin/tasks", {"name": "rte", "path": "rte"}).status_code == 201
            assert client.delete("/admin/tasks/stsb").status_code == 200
            before = sorted(t["name"] for t in client.get("/v1/tasks").json()["tasks"])
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert before == ["copa", "mrpc", "rte", "sst2"]
    process, url, lines = _start(args, env)
    try:
        with httpx.Client(base_url=url) as client:
            assert sorted(t["name"] for t in client.get("/v1/tasks").json()["tasks"]) == before
            pair = {"sentence1": "w5 w6", "sentence2": "w7"}
            reply = post(client, "/v1/predict", {"task": "rte", "inputs": [pair]})
            assert_answers_match(reply.json()["answers"][0], want(made, "rte", pair))
    finally:
        process.terminate()
        code = process.wait(30)
    # SIGTERM: a graceful stop (uvicorn finishes the requests in flight, then ends by the signal, as supervisors
    # expect), no traceback
    assert code == -signal.SIGTERM and not any("Traceback" in line for line in lines), "".join(lines)
    assert any("task stsb was unloaded through the admin API" in line for line in lines)


def test_the_cli_refuses_bad_settings_in_one_line(made, capsys, monkeypatch):
    from conftest import run

    def would_serve(*args, **kwargs):  # a refusal that did not happen fails here instead of serving forever
        raise AssertionError("pelt serve started serving")
    monkeypatch.setattr("pelt.serve.run", would_serve)
    rc, _, err = run(capsys, "serve", "--adapters", made["folders"]["sst2"], "--host", "0.0.0.0")
    assert rc == 2 and "is not a loopback address" in err and "Traceback" not in err
    rc, _, err = run(capsys, "serve", "--adapters", made["folders"]["sst2"], "--adapter-root", made["base"] / "nowhere")
    assert rc == 2 and "--adapter-root" in err and "is not a folder" in err
    rc, _, err = run(capsys, "serve")
    assert rc == 2 and "no adapters to serve: give --adapters, or --adapter-root" in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        rc, _, err = run(capsys, "serve", "--adapters", made["folders"]["sst2"], "--port", str(busy.getsockname()[1]))
        assert rc == 2 and "cannot listen on 127.0.0.1:" in err and "pass another --host or --port" in err
    finally:
        busy.close()
