"""`MultiTaskModel`: one frozen backbone, any number of task adapters, one task per input row.

    mt = MultiTaskModel.from_adapters({"sst2": "runs/sst2/adapter", "rte": "runs/rte/adapter"})
    mt.predict([{"sentence": "a gripping film"}, {"sentence1": "...", "sentence2": "..."}], tasks=["sst2", "rte"])
    out = mt(input_ids, attention_mask, tasks=["sst2", "rte", None])   # None: the backbone alone
    mt.add_task("cola", "runs/cola/adapter"); mt.remove_task("rte")

A task is read into banks (`pelt.multitask.banks`): its method says what it does where (`Method.mixed_batch_ops`,
worked out on a copy of the model's structure on the meta device, so nothing of the backbone is copied), and its
head joins a head group (`pelt.multitask.heads`). Adding or removing a task touches only its own tensors; the
backbone's weights never change, except while one task is merged into them (`merge`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from pelt.arch import (
    base_model,
    base_model_path,
    batch_shared_modules,
    get_arch,
    head_module_names,
    is_layer_norm,
    pooler_path,
    position_limit,
)
from pelt.core import PeltState
from pelt.pooling import masked_mean
from pelt.adapter_files import (
    adapter_method_config,
    apply_adapter_config,
    check_base_model,
    check_trained_tensors,
    model_signature,
    read_adapter_config,
    read_adapter_tensors,
)
from pelt.errors import PeltError
from pelt.methods import get_method
from pelt.methods.ops import Affine, Bias, Bottleneck, LowRankUpdate, NormParams, Prompt, SiteOp, fold_affine
from pelt.models import is_seq2seq
from pelt.multitask.banks import (
    ROUTING,
    AffineBank,
    Bank,
    BiasBank,
    BottleneckBank,
    LowRankBank,
    NormBank,
    PromptSite,
    Routing,
    SharedBank,
    Site,
    projection_shapes,
)
from pelt.multitask.heads import HeadChain, HeadGroup
from pelt.tasks import TaskSpec, get_task
from pelt.tasks.spec import DEFAULT_MAX_LENGTH

KINDS = ("sequence-classification", "multiple-choice", "text-to-text")


@dataclass
class TaskInfo:
    """One task served by a MultiTaskModel."""

    name: str
    id: int
    method: str
    kind: str  # sequence-classification, multiple-choice or text-to-text
    spec: TaskSpec | None  # the benchmark task it was trained on: its fields and labels (None: not recorded)
    label_names: list[str]
    num_outputs: int  # logits per input row (1 for regression and for each choice of a multiple-choice task)
    max_length: int
    parameters: int  # trained values the task holds (method and head)
    stored_bytes: int
    source: str
    config: dict[str, Any] = field(repr=False, default_factory=dict)
    banks: list[Bank] = field(default_factory=list, repr=False)  # every bank holding its tensors (head included)


@dataclass
class MultiTaskOutput:
    """Per input row: its task's logits (None for a row without a task), and the backbone's states.

    `logits` of T5 (text to text) is the LM's (rows, target length, vocabulary) tensor; of encoders a list with one
    1-D tensor per row. `last_hidden_state` and `attention_mask` cover the prompts rows carry."""

    logits: Any
    last_hidden_state: torch.Tensor
    attention_mask: torch.Tensor | None


def _task_kind(config: dict[str, Any]) -> str:
    kind = config.get("formulation")
    if kind in KINDS:
        return kind
    model_class = str(config["base_model"].get("model_class", ""))
    if model_class.endswith("ForMultipleChoice"):
        return "multiple-choice"
    if model_class.endswith("ForConditionalGeneration"):
        return "text-to-text"
    return "sequence-classification"


def shareable_method(config: dict[str, Any], source: str) -> Any:
    """The adapter's method, refused in one line when its task cannot share a backbone (full, intrinsic-said)."""
    method = get_method(config["method"])
    if method.sharing_refusal:
        raise PeltError(f"adapter {source}: {method.sharing_refusal}")
    return method


def adapter_task(config: dict[str, Any]) -> dict[str, Any]:
    """What an adapter's config says of its task: formulation, benchmark task, labels, outputs, max length."""
    kind = _task_kind(config)
    spec = None
    if config.get("task"):
        try:
            spec = get_task(config["task"])
        except PeltError:  # a task this pelt does not know: still servable through forward()
            spec = None
    labels = list(config.get("label_names") or (spec.label_names if spec and spec.label_names else []))
    try:
        outputs = 1 if kind == "multiple-choice" else int(config["base_model"].get("num_labels") or 0)
        max_length = int(config.get("max_length") or DEFAULT_MAX_LENGTH)
    except (TypeError, ValueError):
        raise PeltError("the adapter config's num_labels or max_length is not a number; the adapter is "
                        "damaged") from None
    return {"kind": kind, "spec": spec, "label_names": [str(label) for label in labels], "num_outputs": outputs,
            "max_length": max_length}


class MultiTaskModel(nn.Module):
    """A frozen backbone shared by task adapters; every input row is computed with its own task's adapter."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__()
        if getattr(model, "pelt_state", None) is not None:
            raise PeltError("this model has a pelt method applied; give MultiTaskModel the plain base model and add "
                            "the adapted one as a task")
        self.arch = get_arch(model)
        self.seq2seq = is_seq2seq(model.config)
        self.backbone = base_model(model) if not self.seq2seq else model
        served = self.backbone.__dict__.get("_pelt_served_by")
        if served is not None and served() is not None:
            raise PeltError("this backbone serves another MultiTaskModel already; add the tasks to that one, or load "
                            "the base model again")
        self.backbone.__dict__["_pelt_served_by"] = weakref.ref(self)
        self._owner = object()  # what this model's routings carry, so that no other model's hooks act on them
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.config = self.backbone.config
        self._batch_shared = batch_shared_modules(self.backbone)
        self.tokenizer = tokenizer
        self.sites = nn.ModuleDict()  # module path (dots as "__") -> Site or PromptSite
        self.shared = nn.ModuleDict()  # tensors a task holds once for many projections
        self.heads = nn.ModuleDict()
        self._tasks: dict[str, TaskInfo] = {}
        self._skeletons: dict[str, nn.Module] = {}  # see _skeleton
        self._merged: tuple[str, dict[int, tuple[torch.Tensor, torch.Tensor | None]]] | None = None
        self.eval()

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None) -> MultiTaskModel:
        """The backbone of `model` (a local folder or hub name; None: the bundled MiniLM) and its tokenizer."""
        from pelt.models import load_backbone

        backbone, tokenizer = load_backbone(model)
        return cls(backbone, tokenizer)

    @classmethod
    def from_adapters(cls, adapters: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike], *,
                      model: str | os.PathLike | None = None) -> MultiTaskModel:
        """The base model the adapters were trained on (or `model`), with every adapter as a task. A list names each
        task by the task it was trained on."""
        from pelt.pipeline import adapter_base_model

        named = task_names(adapters)
        first = read_adapter_config(next(iter(named.values())))
        mt = cls.from_pretrained(adapter_base_model(first, str(model) if model is not None else None))
        for name, path in named.items():
            mt.add_task(name, path)
        return mt

    # ---- tasks -------------------------------------------------------------------------------------------------

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        return dict(self._tasks)

    def add_task(self, name: str, adapter: str | os.PathLike | nn.Module) -> TaskInfo:
        """Serve an adapter folder (or an adapted model, `pelt.apply_method`) as task `name`. Only its own tensors
        are stored; the other tasks' outputs do not change."""
        if not isinstance(name, str) or not name.strip():
            raise PeltError(f"a task needs a non-empty name, got {name!r}")
        if name in self._tasks:
            raise PeltError(f"a task named {name!r} is loaded already; remove it first or choose another name")
        if self._merged is not None:
            raise PeltError(f"task {self._merged[0]!r} is merged into the backbone; unmerge() before adding tasks")
        config, tensors, source = self._read(adapter)
        method = shareable_method(config, source)
        kind = _task_kind(config)
        if (kind == "text-to-text") != self.seq2seq:
            raise PeltError(f"adapter {source} is a {kind} task, but this backbone is "
                            f"{'an encoder-decoder' if self.seq2seq else 'an encoder'}; serve it on its own model")
        skeleton = self._skeleton(config, kind, source)
        check_trained_tensors(skeleton, tensors, source=source)
        ops = method.mixed_batch_ops(skeleton, tensors)
        task_id = self._free_id()
        plan = [self._plan(op, base_model_path(skeleton), source, method.name) for op in ops]
        head = self._plan_head(skeleton, tensors, source)
        described = adapter_task(config)
        positions = position_limit(self.backbone)
        if positions is not None:  # inputs are cut to what the backbone's positions take, the prompt's included
            room = positions - method.extra_positions(adapter_method_config(config))
            described["max_length"] = max(1, min(described["max_length"], room))
        info = TaskInfo(name, task_id, method.name, config=config, source=source,
                        parameters=sum(t.numel() for t in tensors.values()),
                        stored_bytes=sum(t.nbytes for t in tensors.values()), **described)
        for place in plan:  # every check passed: from here nothing fails on bad input
            info.banks += place(task_id)
        if head is not None:
            info.banks.append(head(task_id))
        self._tasks[name] = info
        self._reindex()
        return info

    def remove_task(self, name: str) -> None:
        info = self.task(name)
        if self._merged is not None and self._merged[0] == name:
            self.unmerge()
        for bank in info.banks:
            bank.remove(info.id)
        del self._tasks[name]
        self._drop_empty()
        self._reindex()

    def task(self, name: str) -> TaskInfo:
        """A loaded task, by name (a clear error naming the loaded ones otherwise)."""
        if name not in self._tasks:
            loaded = ", ".join(sorted(self._tasks)) or "none"
            raise PeltError(f"unknown task {name!r}; loaded tasks: {loaded}")
        return self._tasks[name]

    def _read(self, adapter: str | os.PathLike | nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
        if isinstance(adapter, nn.Module):
            state: PeltState | None = getattr(adapter, "pelt_state", None)
            if state is None:
                raise PeltError("add_task takes an adapter folder or a model with a pelt method applied")
            if state.merged:
                raise PeltError("the adapted model is merged; pelt.unmerge(model) before adding it as a task")
            params, signature = dict(adapter.named_parameters()), model_signature(adapter)
            config = {"method": state.config.method, "method_config": state.config.to_dict(),
                      "base_model": signature, "train_pooler": state.train_pooler,
                      "pooling": state.pooling, "formulation": _task_kind({"base_model": signature})}
            return config, {n: params[n].detach() for n in state.trainable}, type(adapter).__name__
        config = read_adapter_config(adapter)
        adapter_method_config(config)  # an unknown method or option: one line, before any work
        return config, read_adapter_tensors(adapter), str(adapter)

    def _skeleton(self, config: dict[str, Any], kind: str, source: str) -> nn.Module:
        """The task model the adapter was trained in, its method applied, on the meta device: its structure and
        names only. Tasks of one configuration share one (kept for the last few configurations)."""
        labels = int(config["base_model"].get("num_labels") or len(config.get("label_names") or []) or 2)
        key = json.dumps([kind, labels, config["method_config"], bool(config.get("train_pooler")),
                          config.get("pooling")], sort_keys=True)
        skeleton = self._skeletons.pop(key, None)
        if skeleton is None:
            model_config = copy.deepcopy(self.config)
            if kind != "text-to-text":
                model_config.num_labels = labels
            # a prompt's vocab init draws tokens: keep the caller's random state
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                if kind == "text-to-text":
                    skeleton = type(self.backbone)(model_config)
                else:
                    auto = AutoModelForMultipleChoice if kind == "multiple-choice" \
                        else AutoModelForSequenceClassification
                    skeleton = auto.from_config(model_config)
            check_base_model(source, config["base_model"], model_signature(skeleton))
            with torch.random.fork_rng(devices=[]):
                apply_adapter_config(skeleton, config, adapter_method_config(config))
        else:
            check_base_model(source, config["base_model"], model_signature(skeleton))
        self._skeletons[key] = skeleton
        while len(self._skeletons) > 8:
            self._skeletons.pop(next(iter(self._skeletons)))
        return skeleton

    def _free_id(self) -> int:
        used = {info.id for info in self._tasks.values()}
        return next(i for i in range(1, len(used) + 2) if i not in used)

    def _reindex(self) -> None:
        capacity = max((info.id for info in self._tasks.values()), default=0) + 1
        for bank in self._all_banks():
            bank.reindex(capacity)

    def _all_banks(self) -> list[Bank]:
        sites = [b for site in self.sites.values() for b in site.banks()]
        return sites + list(self.shared.values()) + list(self.heads.values())

    def _drop_empty(self) -> None:
        for site in self.sites.values():
            for group in (getattr(site, g, None) for g in ("input_affine", "output_affine", "low_rank",
                                                           "bottleneck", "lengths")):
                if group is not None:
                    for key in [k for k, bank in group.items() if not bank.tasks]:
                        del group[key]
            if isinstance(site, Site):
                if site.norm is not None and not site.norm.tasks:
                    site.norm = None
                if site.bias is not None and not site.bias.tasks:
                    site.bias = None
                site.sync_forward()
        for key in [k for k, site in self.sites.items() if not site.banks()]:
            self.sites[key].detach()
            del self.sites[key]
        for container in (self.shared, self.heads):
            for key in [k for k, bank in container.items() if not bank.tasks]:
                del container[key]

    # ---- planning: check everything, then place ------------------------------------------------------------------

    def _module(self, path: str) -> nn.Module:
        return self.backbone.get_submodule(path) if path else self.backbone

    def _site(self, path: str) -> Site:
        key = path.replace(".", "__") or "__root__"
        if key not in self.sites:
            self.sites[key] = Site(self._module(path), self._owner)
            self.sites[key].attach()
        return self.sites[key]

    @staticmethod
    def _join(group: nn.ModuleDict, key: str, make: Any, task: int, tensors: dict[str, torch.Tensor]) -> Bank:
        if key not in group:
            group[key] = make()
        group[key].add(task, tensors)
        return group[key]

    def _plan(self, op: SiteOp, prefix: str, source: str, method: str) -> Any:
        """Check one op against the backbone; return what places the task's tensors into the right bank."""
        path = op.path[len(prefix) + 1:] if prefix and op.path.startswith(prefix + ".") else \
            "" if op.path == prefix else op.path
        module = self._module(path)
        weight = next(module.parameters())
        if path in self._batch_shared:
            raise PeltError(f"adapter {source} ({method}) changes {path}, which this {self.arch.family} model also "
                            "runs on the relative-position embeddings every row shares, so the task cannot share a "
                            "batch with others; serve it on a model of its own")
        if isinstance(op, (Affine, Bias)) and not (isinstance(module, nn.Linear) or is_layer_norm(module)):
            raise PeltError(f"adapter {source} ({method}) changes the {type(module).__name__} at {path}, which pelt "
                            "cannot change per row; serve it on a model of its own")
        if isinstance(op, Bias) and isinstance(module, nn.Linear):
            def place(task: int) -> list[Bank]:
                site = self._site(path)
                if site.bias is None:
                    site.bias = BiasBank(module)
                    site.sync_forward()
                site.bias.add(task, {"bias": op.value})
                return [site.bias]
            return place
        if isinstance(op, Bias):  # a norm's: a shift of its output
            native = module._parameters.get("bias")
            shift = op.value if native is None else op.value - native.detach().to(op.value)
            op = Affine(op.path, "output", shift=shift)
        if isinstance(op, Affine):
            tensors = {k: v for k, v in (("scale", op.scale), ("shift", op.shift)) if v is not None}
            size = next(iter(tensors.values())).shape[-1]
            key = f"{'s' if op.scale is not None else ''}{'t' if op.shift is not None else ''}{size}"

            def place(task: int) -> list[Bank]:
                site = self._site(path)
                group = site.input_affine if op.side == "input" else site.output_affine
                return [self._join(group, key, lambda: AffineBank(size, scale=op.scale is not None,
                                                                  shift=op.shift is not None, like=weight),
                                   task, tensors)]
            return place
        if isinstance(op, NormParams):
            NormBank.kind_of(module)  # refuses a norm it cannot run per row
            if op.bias is not None and not NormBank.has_bias(module):
                raise RuntimeError(f"{path}: a bias for a norm that has none")
            tensors = {"weight": op.weight}
            if NormBank.has_bias(module):
                tensors["bias"] = op.bias if op.bias is not None else module.bias.detach()

            def place(task: int) -> list[Bank]:
                site = self._site(path)
                if site.norm is None:
                    site.norm = NormBank(module)
                    site.sync_forward()
                site.norm.add(task, tensors)
                return [site.norm]
            return place
        if isinstance(op, LowRankUpdate):
            rank, inputs = op.down.shape
            outputs = op.up.shape[0]
            key = f"{rank}x{inputs}x{outputs}"

            def place(task: int) -> list[Bank]:
                return [self._join(self._site(path).low_rank, key,
                                   lambda: LowRankBank(rank, inputs, outputs, weight), task,
                                   {"down": op.down, "up": op.up})]
            return place
        if isinstance(op, Bottleneck):
            key = _key(op.activation, projection_shapes(op.down), projection_shapes(op.up))
            tensors, shared = {}, {}  # the bank's own tensors; the task's shared ones by their bank's key
            for side, projection in (("down", op.down), ("up", op.up)):
                for name, value in projection.tensors.items():
                    if name in projection.shared:
                        shared[projection.shared[name]] = (_key(projection.shared[name], value.shape), value)
                    else:
                        tensors[f"{side}_{name}"] = value
                if projection.bias is not None:
                    tensors[f"{side}_bias"] = projection.bias

            def place(task: int) -> list[Bank]:
                banks = []
                for shared_key, value in shared.values():
                    if shared_key not in self.shared:
                        self.shared[shared_key] = SharedBank(tuple(value.shape), weight)
                    if task not in self.shared[shared_key].tasks:  # held once per task, read by all its sites
                        self.shared[shared_key].add(task, {"value": value})
                        banks.append(self.shared[shared_key])
                refs = {name: self.shared[shared_key] for name, (shared_key, _) in shared.items()}
                return banks + [self._join(self._site(path).bottleneck, key,
                                           lambda: BottleneckBank(op.activation, op.down, op.up, weight, refs),
                                           task, tensors)]
            return place
        if isinstance(op, Prompt):
            size, width = op.vectors.shape
            entries = [stack.entry for stack in self.arch.stacks]

            def place(task: int) -> list[Bank]:
                key = "prompt__" + path.replace(".", "__")
                if key not in self.sites:
                    decoders = [self._module(e) for e in entries if e != path and _has(self.backbone, e)]
                    self.sites[key] = PromptSite(module, op.position, op.max_positions, decoders, self._owner)
                    self.sites[key].attach()
                site = self.sites[key]
                return [self._join(site.lengths, str(size),
                                   lambda: Bank({"vectors": torch.zeros(size, width, dtype=weight.dtype,
                                                                        device=weight.device)}),
                                   task, {"vectors": op.vectors})]
            return place
        raise RuntimeError(f"no bank for {type(op).__name__}")

    def _plan_head(self, skeleton: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> Any:
        state: PeltState = skeleton.pelt_state
        if not state.head:
            return None
        paths = head_module_names(skeleton)
        if state.train_pooler:
            paths = [pooler_path(skeleton), *paths]
        if state.pooling:
            head_input = state.pooling
        elif state.train_pooler:
            head_input = "sequence"
        elif getattr(base_model(skeleton), "pooler", None) is not None:
            head_input = "pooled"
            if getattr(self.backbone, "pooler", None) is None:
                raise PeltError(f"adapter {source}: its head reads the backbone's pooler, which this backbone was "
                                "built without; build the model with MultiTaskModel.from_pretrained")
        else:
            head_input = "sequence"
        chain = HeadChain([(p, skeleton.get_submodule(p)) for p in paths])
        values = {f"{p.replace('.', '_')}.{n}".replace(".", "__"): tensors[f"{p}.{n}"]
                  for p in paths for n, _ in skeleton.get_submodule(p).named_parameters()}
        key = _key(*HeadGroup.signature(head_input, chain))
        weight = next(self.backbone.parameters())

        def place(task: int) -> HeadGroup:
            if key not in self.heads:
                self.heads[key] = HeadGroup(head_input, chain, weight)
            self.heads[key].add(task, values)
            return self.heads[key]
        return place

    # ---- forward -----------------------------------------------------------------------------------------------

    def _row_ids(self, tasks: str | Sequence[str | None] | None, rows: int, device: torch.device) -> torch.Tensor:
        if tasks is None or isinstance(tasks, str):
            tasks = [tasks] * rows
        if len(tasks) != rows:
            raise PeltError(f"{len(tasks)} tasks for {rows} input rows; give one task (or None) per row")
        ids = [0 if t is None else self.task(t).id for t in tasks]
        if self._merged is not None:
            others = sorted({str(t) for t in tasks if t != self._merged[0]})
            if others:
                raise PeltError(f"the backbone has task {self._merged[0]!r} merged into it, so it cannot also run "
                                f"{', '.join(others)}; call unmerge() first")
        return torch.tensor(ids, dtype=torch.long, device=device)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                tasks: str | Sequence[str | None] | None, token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> MultiTaskOutput:
        """Run each input row with its task (`tasks`: one name or None per row, or one name for all rows)."""
        first = input_ids if input_ids is not None else inputs_embeds
        rows = self._row_ids(tasks, first.shape[0], first.device)
        routing = Routing(rows, owner=self._owner)
        token = ROUTING.set(None if self._merged is not None else routing)
        try:
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                **extra, **kwargs)
        finally:
            ROUTING.reset(token)
        mask = routing.widened_mask if routing.widened_mask is not None else attention_mask
        if self.seq2seq:
            return MultiTaskOutput(out.logits, out.encoder_last_hidden_state, mask)
        states = out.last_hidden_state
        return MultiTaskOutput(self._head_logits(rows, states, getattr(out, "pooler_output", None), mask),
                               states, mask)

    def _head_logits(self, rows: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor | None,
                     mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        logits: list[torch.Tensor | None] = [None] * rows.shape[0]
        features = {}
        for group in self.heads.values():
            slots = group.slot_of[rows]
            members = torch.nonzero(slots).squeeze(1)
            if members.numel() == 0:
                continue
            kind = group.head_input
            if kind not in features:
                features[kind] = {"pooled": lambda: pooled, "sequence": lambda: states,
                                  "cls": lambda: states[:, 0], "mean": lambda: masked_mean(states, mask)}[kind]()
            out = group.apply(features[kind][members], slots[members])
            for row, value in zip(members.tolist(), out.unbind(0)):
                logits[row] = value
        return logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 tasks: str | Sequence[str | None] | None, **generate_kwargs: Any) -> torch.Tensor:
        """Text to text: each row generated with its own task's adapter (greedy or beam search)."""
        if not self.seq2seq:
            raise PeltError("generate is for text-to-text (T5) backbones; call the model for encoder tasks")
        rows = self._row_ids(tasks, input_ids.shape[0], input_ids.device)
        settings = self.backbone.generation_config
        beams = int(generate_kwargs.get("num_beams") or settings.num_beams or 1)
        returned = int(generate_kwargs.get("num_return_sequences") or settings.num_return_sequences or 1)
        routing = Routing(rows, owner=self._owner, expansions=(beams, returned, beams * returned))
        token = ROUTING.set(None if self._merged is not None else routing)
        try:
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            ROUTING.reset(token)

    # ---- one task at the backbone's speed ------------------------------------------------------------------------

    def merge(self, name: str) -> None:
        """Fold one task into the backbone's weights: its rows then cost what the bare backbone costs. Other tasks
        (and rows without a task) are refused until `unmerge`, which restores the backbone exactly."""
        info = self.task(name)
        if self._merged is not None:
            raise PeltError(f"task {self._merged[0]!r} is merged already; unmerge() first")
        folds = []
        for key, site in self.sites.items():
            for bank in site.banks():
                if info.id not in bank.tasks:
                    continue
                if isinstance(site, PromptSite) or isinstance(bank, BottleneckBank):
                    raise PeltError(f"task {name!r} ({info.method}) is not a linear change of the weights, so it "
                                    "cannot be merged; serve it unmerged")
                folds.append((site, bank))
        saved: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # id(module) -> its weight and bias
        for site, _ in folds:
            module = site.module
            if id(module) not in saved:
                bias = module._parameters.get("bias")
                saved[id(module)] = (module.weight.detach().clone(), None if bias is None else bias.detach().clone())
        try:
            with torch.no_grad():
                for site, bank in folds:
                    _fold(site, bank, bank.tasks.index(info.id) + 1)
        except PeltError:
            self._restore(saved)
            raise
        for site in self.sites.values():
            site.detach()
        self._merged = (name, saved)

    def unmerge(self) -> None:
        if self._merged is None:
            return
        self._restore(self._merged[1])
        for site in self.sites.values():
            site.attach()
        self._merged = None

    def _restore(self, saved: dict) -> None:
        modules = {id(site.module): site.module for site in self.sites.values() if isinstance(site, Site)}
        with torch.no_grad():
            for key, (weight, bias) in saved.items():
                module = modules[key]
                module.weight.copy_(weight)
                if bias is None:
                    if "bias" in module._parameters:  # added by the merge
                        module.bias = None
                else:
                    module.bias.copy_(bias)

    # ---- sizes -------------------------------------------------------------------------------------------------

    def stored_bytes(self) -> int:
        """Bytes of every task tensor held (the banks, their identity slots included)."""
        return sum(bank.stored_bytes() for bank in self._all_banks())

    def predict(self, examples: Sequence[Mapping[str, Any]], tasks: str | Sequence[str], *, batch_size: int = 32,
                num_beams: int = 1, progress: bool = False) -> list[dict[str, Any]]:
        """Answers for raw examples (each with its task's fields): label and probabilities, score, or text."""
        from pelt.multitask.predict import predict

        return predict(self, examples, tasks, batch_size=batch_size, num_beams=num_beams, progress=progress)


def _key(*parts: Any) -> str:
    """A bank's name in a ModuleDict, from what makes tasks share it."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _fold(site: Site, bank: Bank, slot: int) -> None:
    """Fold one task's slot of a bank into its module's weight and bias."""
    module = site.module
    values = {name: getattr(bank, name)[slot] for name in bank.fields}
    if isinstance(bank, NormBank):
        module.weight.copy_(values["weight"])
        if "bias" in values:
            module.bias.copy_(values["bias"])
    elif isinstance(bank, BiasBank):
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(values["bias"]), requires_grad=False)
        module.bias.copy_(values["bias"])
    elif isinstance(bank, LowRankBank):
        module.weight.add_(values["up"] @ values["down"])
    else:
        side = "input" if bank in site.input_affine.values() else "output"
        fold_affine(module, side, values.get("scale"), values.get("shift"))


def task_names(adapters: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]) -> dict[str, str]:
    """Adapter folders by task name: given, or the task each was trained on (two of one task must be named)."""
    if isinstance(adapters, Mapping):
        named = {str(k): str(v) for k, v in adapters.items()}
    else:
        named = {}
        for path in adapters:
            config = read_adapter_config(path)
            name = str(config.get("task") or Path(path).name)
            if name in named:
                raise PeltError(f"adapters {named[name]} and {path} are both for task {name!r}; name them "
                                "(NAME=DIR on the command line, a dict in Python)")
            named[name] = str(path)
    if not named:
        raise PeltError("no adapters given")
    return named
