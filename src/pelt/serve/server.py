"""The serving core, without HTTP: the tasks one backbone answers, their checks, and the set kept across restarts.

`TaskServer` is what `pelt serve` puts behind its endpoints, and what a notebook can call directly: `predict`
puts a request on the batcher and returns a future; `load` and `unload` change the tasks between batches. The
adapters loaded or unloaded at run time are recorded in `<state dir>/tasks.json` (written atomically after each
change), so a restart, after a crash too, serves the same tasks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pelt.adapter_files import read_adapter_config
from pelt.errors import PeltError
from pelt.files import hold_folder, make_writable_folder, os_error_line, write_json
from pelt.serve.batcher import Batcher, PredictJob

__all__ = ["STATE_FILE", "AdminRefused", "NameTaken", "RequestTooLarge", "ServerSettings", "TaskServer", "UnknownTask",
           "is_loopback"]

STATE_FILE = "tasks.json"
API_KEY_ENV = "PELT_API_KEY"


@dataclass
class ServerSettings:
    """How the server listens and what it accepts. Limits keep one client from taking the server down."""

    host: str = "127.0.0.1"
    port: int = 8000
    adapter_root: str | None = None  # adapters loadable at run time live under it (None: none are)
    state_dir: str | None = None  # where the loaded set is kept (default: <adapter_root>/.pelt-serve)
    api_key: str | None = None  # required on every request when set
    model: str | None = None  # the backbone (default: the one the adapters were trained on)
    max_batch_size: int = 32  # inputs gathered into one batch
    forward_batch_size: int | None = None  # inputs per forward pass in it (None: 8 on a CPU, the batch on a GPU)
    max_wait_ms: float = 5.0  # how long the oldest input waits for company
    max_inputs: int = 256  # inputs per request
    max_body_bytes: int = 1_000_000
    max_text_chars: int = 20_000  # characters per text field
    request_timeout_s: float = 30.0

    def validate(self) -> None:
        for name in ("max_batch_size", "max_inputs", "max_body_bytes", "max_text_chars", "forward_batch_size"):
            value = getattr(self, name)
            if name == "forward_batch_size" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise PeltError(f"{name} must be a positive integer, got {value!r}")
        for name, least in (("max_wait_ms", "at least 0"), ("request_timeout_s", "above 0")):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0 <= value < float("inf")) or \
                    (least == "above 0" and value == 0):
                raise PeltError(f"{name} must be a finite number {least}, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise PeltError(f"the port must be in 0..65535, got {self.port}")
        if self.api_key is not None and (not self.api_key.strip() or self.api_key != self.api_key.strip()
                                         or not self.api_key.isascii() or not self.api_key.isprintable()):
            raise PeltError("the API key must be printable ASCII with no spaces around it, and not empty")
        if not is_loopback(self.host) and not self.api_key:
            raise PeltError(f"--host {self.host} is not a loopback address: anyone who reaches this machine could "
                            f"use the server; set --api-key (or {API_KEY_ENV}) to require a key, or bind to "
                            "127.0.0.1")

    def state_folder(self) -> Path | None:
        if self.state_dir:
            return Path(self.state_dir)
        return Path(self.adapter_root) / ".pelt-serve" if self.adapter_root else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class TaskServer:
    """A MultiTaskModel behind a batcher, with the task set persisted. Close it (or use it in `with`)."""

    def __init__(self, adapters: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] = (),
                 settings: ServerSettings | None = None, *, log: Any = None) -> None:
        from pelt.multitask import MultiTaskModel, task_names

        self.settings = settings or ServerSettings()
        self.settings.validate()
        self.log = log or (lambda line: print(f"pelt: {line}", file=sys.stderr, flush=True))
        self._root = self._checked_root()
        self._stack = contextlib.ExitStack()
        self._state_file: Path | None = None
        self._added: dict[str, str] = {}  # loaded at run time: name -> adapter folder (resolved)
        self._removed: list[str] = []  # startup adapters unloaded at run time (a name reloaded stays here)
        self._startup: set[str] = set()
        try:
            folder = self.settings.state_folder()
            if folder is not None:
                folder = make_writable_folder(folder, "--state-dir")
                refusal = (f"the state folder {folder} is in use by another pelt serve; stop it, or pass another "
                           "--state-dir")
                self._stack.enter_context(hold_folder(folder, refusal, reentrant=False))
                self._state_file = folder / STATE_FILE
                self._read_state()
            startup = task_names(adapters) if adapters else {}
            self._startup = set(startup)
            kept = {name: path for name, path in startup.items() if name not in self._removed}
            for name in sorted(set(startup) - set(kept)):
                again = " (served from the adapter loaded in its place)" if name in self._added else ""
                self.log(f"task {name} was unloaded through the admin API ({self._state_file}); not loaded{again}")
            if not kept and not self._added and self.settings.model is None and self._root is None:
                raise PeltError("no adapters to serve: give --adapters, or --adapter-root to load them at run time")
            self.model = (MultiTaskModel.from_adapters(kept, model=self.settings.model) if kept
                          else self._bare_model(list(self._added.values())))
            for name, path in list(self._added.items()):
                self._restore(name, path)
        except BaseException:
            self._stack.close()
            raise
        self.on_batch: Any = None  # called with each batch's examples and seconds (the metrics)
        self.batcher = Batcher(self._run_batch, max_batch_size=self.settings.max_batch_size,
                               max_wait_s=self.settings.max_wait_ms / 1000, on_batch=self._on_batch)

    # ---- construction helpers ------------------------------------------------------------------------------

    def _checked_root(self) -> Path | None:
        root = self.settings.adapter_root
        if root is None:
            return None
        path = Path(root)
        if not path.is_dir():
            raise PeltError(f"--adapter-root {root} is not a folder; give the folder the adapters live under")
        return path.resolve()

    def _bare_model(self, adapters: list[str]) -> Any:
        """The backbone when no startup adapter names it: --model, else the base model of the first run-time
        adapter still readable, else the bundled default."""
        from pelt.multitask import MultiTaskModel
        from pelt.pipeline import adapter_base_model

        if self.settings.model is None:
            for adapter in adapters:
                try:
                    return MultiTaskModel.from_pretrained(adapter_base_model(read_adapter_config(adapter)))
                except (PeltError, OSError):
                    continue  # gone or damaged since: _restore says so
        return MultiTaskModel.from_pretrained(self.settings.model)

    def _read_state(self) -> None:
        assert self._state_file is not None
        if not self._state_file.is_file():
            return
        try:
            state = json.loads(self._state_file.read_text())
            added, removed = state["added"], state["removed"]
            if not (isinstance(added, dict) and isinstance(removed, list)):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise PeltError(f"the server's state file {self._state_file} is damaged; move it away to start with "
                            "the --adapters alone") from None
        self._added = {str(k): str(v) for k, v in added.items()}
        self._removed = [str(name) for name in removed]

    def _restore(self, name: str, path: str) -> None:
        """An adapter loaded at run time before the restart: loaded again, or skipped with a line saying why."""
        try:
            self.model.add_task(name, self.resolve_adapter(path))
        except (PeltError, OSError) as error:
            reason = os_error_line(error) if isinstance(error, OSError) else str(error)
            self.log(f"task {name} ({path}), loaded before the restart, is not served: {reason}")
            del self._added[name]

    def _write_state(self) -> None:
        if self._state_file is not None:
            write_json(self._state_file, {"added": self._added, "removed": self._removed})

    # ---- what the endpoints call ---------------------------------------------------------------------------

    def tasks(self) -> list[dict[str, Any]]:
        return [{"name": info.name, "method": info.method, "kind": info.kind,
                 "task": info.spec.name if info.spec else None,
                 "fields": list(_fields(info)), "labels": info.label_names,
                 "trained_parameters": info.parameters, "stored_bytes": info.stored_bytes,
                 "max_length": info.max_length} for info in self.model.tasks.values()]

    def check_request(self, task: str, inputs: Sequence[Any]) -> None:
        """Refuse what the model would refuse, before the request waits in the queue: a PeltError saying which
        input and what is wrong (`RequestTooLarge` for the limits)."""
        from pelt.multitask.predict import ID_FIELD, check_example

        info = self.model.tasks.get(task)
        if info is None:
            raise UnknownTask(f"unknown task {task!r}; {_loaded(self.model.tasks)}")
        if info.spec is None:
            raise PeltError(f"task {task!r} does not record the benchmark task it was trained on, so its input "
                            "fields are unknown; it cannot be served by name")
        if not inputs:
            raise PeltError("'inputs' is empty; send at least one input")
        if len(inputs) > self.settings.max_inputs:
            raise RequestTooLarge(f"{len(inputs)} inputs, over this server's limit of {self.settings.max_inputs} "
                                  "per request; send them in several requests")
        for i, example in enumerate(inputs):
            problem = check_example(example, info.spec, info.kind)
            if problem:
                raise PeltError(f"inputs[{i}]: {problem}")
            if not _finite_json(example.get(ID_FIELD)):
                raise PeltError(f"inputs[{i}].id: {example[ID_FIELD]!r} cannot be echoed back in JSON; send a string "
                                "or a finite number")
            entities = example.get("entities") if info.spec.kind == "entity_ranking" else None
            if entities is not None and len(entities) > self.settings.max_inputs:
                raise RequestTooLarge(f"inputs[{i}].entities: {len(entities):,} candidates, over this server's "
                                      f"limit of {self.settings.max_inputs} per input")
            for name in _fields(info):
                value = example[name]
                size = len(value) if isinstance(value, str) else sum(len(v) for v in value)
                if size > self.settings.max_text_chars:
                    raise RequestTooLarge(f"inputs[{i}].{name}: {size:,} characters, over this server's limit of "
                                          f"{self.settings.max_text_chars:,}")

    def predict(self, task: str, inputs: Sequence[Mapping[str, Any]]) -> Future:
        """Answers for `inputs` of `task`, through the batcher (checked first)."""
        self.check_request(task, inputs)
        return self.batcher.submit(PredictJob(task, inputs))

    def resolve_adapter(self, path: str | os.PathLike) -> Path:
        """An adapter folder under the adapter root; a path outside it (`..`, a symlink out) is refused."""
        if self._root is None:
            raise AdminRefused("this server loads no adapters at run time; start it with --adapter-root ROOT")
        try:
            given = Path(path)
            resolved = (given if given.is_absolute() else self._root / given).resolve()
            if not resolved.is_relative_to(self._root):
                raise AdminRefused(f"{path} lies outside the adapter root; give a folder under it")
            if not (resolved / "adapter_config.json").is_file():
                raise PeltError(f"{path}: no adapter there (no adapter_config.json)")
            for file in resolved.iterdir():  # what loading reads: no link out of the root, no device
                target = file.resolve()
                if not target.is_relative_to(self._root):
                    raise AdminRefused(f"{path}/{file.name} leads outside the adapter root")
                if file.suffix in (".json", ".safetensors") and not stat.S_ISREG(target.stat().st_mode):
                    raise AdminRefused(f"{path}/{file.name} is not a regular file")
        except (OSError, ValueError) as error:  # a NUL byte, a name too long, a folder that cannot be read
            reason = os_error_line(error) if isinstance(error, OSError) else str(error)
            raise PeltError(f"adapter path {str(path)[:200]!r}: {reason}") from None
        return resolved

    def load(self, name: str, path: str | os.PathLike) -> Future:
        """Add adapter `path` (under the adapter root) as task `name`, between two batches."""
        if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
            raise PeltError(f"a task name is 1 to 100 letters, digits, '.', '_' or '-', got {name!r}")
        if name in self.model.tasks:
            raise NameTaken(f"a task named {name!r} is loaded already; unload it first or choose another name")
        folder = self.resolve_adapter(path)

        def add() -> dict[str, Any]:
            if name in self.model.tasks:  # loaded by another request since
                raise NameTaken(f"a task named {name!r} is loaded already; unload it first or choose another name")
            try:
                self.model.add_task(name, folder)
            except OSError as error:  # unreadable files: the adapter's fault, said as such
                raise PeltError(f"{path}: {os_error_line(error)}") from None
            self._added[name] = str(folder)
            try:
                self._write_state()
            except OSError:
                self.model.remove_task(name)  # memory and disk agree: neither has it
                del self._added[name]
                raise
            return next(t for t in self.tasks() if t["name"] == name)
        return self.batcher.exclusive(add)

    def unload(self, name: str) -> Future:
        def remove() -> None:
            if name not in self.model.tasks:
                raise UnknownTask(f"unknown task {name!r}; {_loaded(self.model.tasks)}")
            self.model.remove_task(name)
            self._added.pop(name, None)
            if name in self._startup and name not in self._removed:
                self._removed.append(name)  # a restart must not bring the startup adapter back
            self._write_state()
        return self.batcher.exclusive(remove)

    def close(self) -> None:
        self.batcher.close()
        self._stack.close()

    def __enter__(self) -> TaskServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- on the worker -------------------------------------------------------------------------------------

    def _run_batch(self, items: list[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Answers of a gathered batch, tasks mixed; an input whose task was unloaded while it waited gets the
        error that says so."""
        from pelt.multitask.predict import predict

        loaded = self.model.tasks
        served = [i for i, (task, _) in enumerate(items) if task in loaded]
        answers: list[Any] = [UnknownTask(f"unknown task {task!r}: it was unloaded") for task, _ in items]
        if served:
            results = predict(self.model, [items[i][1] for i in served], [items[i][0] for i in served],
                              batch_size=self.forward_batch_size())
            for i, answer in zip(served, results):
                answers[i] = {k: v for k, v in answer.items() if k != "task"}
        return answers

    def forward_batch_size(self) -> int:
        """Inputs per forward pass. On a CPU a row costs about the same in any batch, and a batch is padded to its
        longest row: a gathered batch sorted by length and run a few rows at a time wastes less on padding than
        one pass of all of it. A GPU wants the whole batch in one pass."""
        if self.settings.forward_batch_size is not None:
            return self.settings.forward_batch_size
        on_gpu = next(self.model.backbone.parameters()).device.type != "cpu"
        return self.settings.max_batch_size if on_gpu else min(8, self.settings.max_batch_size)

    def _on_batch(self, examples: int, seconds: float) -> None:
        if self.on_batch is not None:
            self.on_batch(examples, seconds)


class RequestTooLarge(PeltError):
    """A request over one of the server's limits."""


class UnknownTask(PeltError):
    """A task the server does not serve (now)."""


class NameTaken(PeltError):
    """A task name loaded already."""


class AdminRefused(PeltError):
    """An admin request the server's configuration does not allow."""


_TASK_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _finite_json(value: Any) -> bool:
    """Whether `value` can be written back as strict JSON (no NaN or infinity anywhere in it)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _loaded(tasks: Mapping[str, Any], shown: int = 10) -> str:
    names = sorted(tasks)
    if not names:
        return "no tasks are loaded"
    listed = ", ".join(names[:shown])
    more = f", ... ({len(names)} in all; GET /v1/tasks lists them)" if len(names) > shown else ""
    return f"loaded tasks: {listed}{more}"


def _fields(info: Any) -> tuple[str, ...]:
    from pelt.multitask.predict import required_fields

    return required_fields(info.spec, info.kind) if info.spec else ()
