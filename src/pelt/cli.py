"""`pelt` command line: argument parsing only; every command calls the public Python API.

Each method's options become flags automatically from its config dataclass, so `pelt train --method hadamard
--help` lists the Hadamard options and a new method needs no CLI code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from pelt.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUNS_FAILED, PeltError, PeltWarning


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors are PeltErrors: for flags checked before anything runs (`pelt sweep --train-args`)."""

    def error(self, message: str) -> typing.NoReturn:
        raise PeltError(message)


def _argument_type(parse: Any, example: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {example}") from None
    return convert


def _add_method_options(parser: argparse.ArgumentParser, config_class: type) -> list[str]:
    """One flag per config field; returns the field names."""
    from pelt.methods.base import option_type, parse_int_list, parse_int_sequence

    int_list = _argument_type(parse_int_list, "a list of integers like 8,9,10 or 4-11")
    int_sequence = _argument_type(parse_int_sequence, "a comma-separated list of integers")
    group = parser.add_argument_group(f"options of method '{config_class.method}'")
    names = []
    for f in dataclasses.fields(config_class):
        kind = option_type(config_class, f.name)
        args = typing.get_args(kind)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = None if f.default is dataclasses.MISSING else f.default
        if kind is bool:
            group.add_argument(flag, dest=f"m_{f.name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default: {default})")
        elif typing.get_origin(kind) is list and args == (str,):
            group.add_argument(flag, dest=f"m_{f.name}", type=lambda text: [t.strip() for t in text.split(",")],
                               default=None, metavar="A,B", help=f"{help_text} (default: {','.join(default or [])})")
        elif typing.get_origin(kind) is list:
            if f.metadata.get("keep_order"):
                group.add_argument(flag, dest=f"m_{f.name}", type=int_sequence, default=None,
                                   metavar="I,J,K", help=help_text)
            else:
                group.add_argument(flag, dest=f"m_{f.name}", type=int_list, default=None, metavar="LIST",
                                   help=f"{help_text} (e.g. 8,9,10,11 or 8-11)")
        elif typing.get_origin(kind) is typing.Literal:
            group.add_argument(flag, dest=f"m_{f.name}", choices=list(args), default=None,
                               help=f"{help_text} (default: {default})")
        else:
            group.add_argument(flag, dest=f"m_{f.name}", type=kind, default=None, metavar=f.name.upper(),
                               help=f"{help_text} (default: {default})")
        names.append(f.name)
    return names


def _method_config(args: argparse.Namespace, method_name: str) -> Any:
    from pelt.methods import get_method

    config_class = get_method(method_name).config_class
    options = {f.name: getattr(args, f"m_{f.name}") for f in dataclasses.fields(config_class)
               if getattr(args, f"m_{f.name}", None) is not None}
    return config_class.from_dict(options)


def _split_args(parser: argparse.ArgumentParser, *, default: str | None) -> None:
    parser.add_argument("--split-protocol", choices=["standard", "compacter"], default=default,
                        help="standard: train / official dev; compacter: the Compacter paper's validation and test "
                             "splits (dev halved on small tasks, 1,000 training examples for validation on large "
                             "ones)" + (" (default: the adapter's)" if default is None else ""))
    parser.add_argument("--split-seed", type=int, default=None if default is None else 42,
                        help="seed of the split protocol's shuffle (default 42)")


def _common_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="local folder or hub name of the base model (default: the bundled all-MiniLM-L6-v2)")


def _build_parser(method_name: str | None,
                  parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = parser_class(prog="pelt", description="parameter-efficient language-model tuning")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, method_name)
    _eval_parser(sub)
    _predict_parser(sub)
    _serve_parser(sub)
    _params_parser(sub, method_name)
    _methods_parser(sub)
    _sweep_parser(sub)
    _bench_parser(sub)
    _report_parser(sub)
    _add_analyze_parser(sub)
    _tasks_parser(sub)
    return parser


def _train_parser(sub: Any, method_name: str | None) -> None:
    """`pelt train`: a method on a task; each method's options become flags (`method_name`'s here)."""
    from pelt.methods import get_method, list_methods

    # no abbreviations: `--se 7` would set --seed behind the back of a sweep that sets it for each run
    train = sub.add_parser("train", help="fine-tune a model with a method on a task", allow_abbrev=False)
    _common_model_args(train)
    train.add_argument("--method", default="hadamard", help=f"one of {', '.join(list_methods())} (default: hadamard)")
    train.add_argument("--task", required=True,
                       help="GLUE: cola sst2 mrpc qqp stsb mnli qnli rte wnli; SuperGLUE: boolq cb copa multirc record "
                            "wic superglue-rte")
    train.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"),
                       help="a glue_data-style or SuperGLUE folder (holding SST-2/, CB/, ...), a data root holding "
                            "glue/ and superglue/, or a task folder; default $PELT_DATA_DIR, else the hub")
    train.add_argument("--output-dir", required=True, help="where the adapter, checkpoints and results.json go")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    protocol = " (default: the task's protocol value, see `pelt tasks`)"
    train.add_argument("--epochs", type=float, default=None, help="training epochs" + protocol)
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    train.add_argument("--batch-size", type=int, default=None, help="training batch size" + protocol)
    train.add_argument("--eval-batch-size", type=int, default=64)
    train.add_argument("--max-length", type=int, default=None, help="maximum input tokens" + protocol)
    train.add_argument("--weight-decay", type=float, default=0.0)
    warmup = train.add_mutually_exclusive_group()
    warmup.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps" + protocol)
    warmup.add_argument("--warmup-ratio", type=float, default=None, help="warm-up as a fraction of the steps")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--max-train-samples", type=int, default=None,
                       help="seeded subsample of the train set (MultiRC: questions)")
    train.add_argument("--max-eval-samples", type=int, default=None)
    train.add_argument("--eval-steps", type=int, default=None,
                       help="evaluate and checkpoint every N steps (default: every epoch)")
    _split_args(train, default="standard")
    train.add_argument("--target-style", choices=["names", "ids"], default="names",
                       help="T5 targets: label names (T5's convention) or ids '0', '1' (the Compacter code's)")
    train.add_argument("--no-task-prefix", dest="task_prefix", action="store_false",
                       help="T5 inputs without the task name in front")
    train.add_argument("--recipe", choices=["auto", "two-stage", "joint"], default="auto",
                       help="two-stage: head alone first, then the method (default for hadamard)")
    train.add_argument("--head-epochs", type=float, default=1.0, help="epochs of stage (a), the head alone")
    train.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of stage (a)")
    train.add_argument("--train-pooler", action="store_true",
                       help="train BERT's pooler as part of the task head (for checkpoints whose pooler was never "
                            "trained, such as sentence-embedding models like the bundled MiniLM)")
    train.add_argument("--pooling", choices=["cls", "mean", "pooler"],
                       help="replace BERT's pooler by the [CLS] state or the mean of the tokens' states (nothing "
                            "trained: a task stores only its classifier), or keep the pooler as it is; default: mean "
                            "where the checkpoint's pooler was never trained (as the bundled MiniLM's), else the "
                            "pooler; not with --train-pooler")
    if method_name:
        _add_method_options(train, get_method(method_name).config_class)


def _eval_parser(sub: Any) -> None:
    """`pelt eval`: a saved adapter on its task's evaluation splits."""
    ev = sub.add_parser("eval", help="evaluate a saved adapter on a task")
    ev.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    _common_model_args(ev)
    ev.add_argument("--task", default=None, help="default: the task the adapter was trained on")
    ev.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))
    ev.add_argument("--split", action="append", default=None,
                    help="split(s) to evaluate (default: the evaluation splits of the split protocol)")
    _split_args(ev, default=None)
    ev.add_argument("--max-length", type=int, default=None,
                    help="default: the length the adapter was trained with (128 if it does not record one)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _predict_parser(sub: Any) -> None:
    """`pelt predict`: answers of one or several adapters, the tasks mixed in each batch."""
    pred = sub.add_parser("predict", help="answers of one or several adapters on new examples, the tasks mixed in "
                                          "each batch on one backbone")
    pred.add_argument("--adapter", action="append", required=True, metavar="[NAME=]DIR",
                      help="an adapter folder, named by the task it was trained on or NAME=DIR; repeat for several "
                           "(then each input line names its task in a 'task' field)")
    pred.add_argument("--input", required=True,
                      help="JSON lines or a TSV file with a header, with the task's fields (e.g. sentence, or "
                           "sentence1 and sentence2); - reads standard input")
    pred.add_argument("--input-format", choices=["auto", "jsonl", "tsv"], default="auto",
                      help="auto: .tsv files are TSV, others (and stdin starting with '{') JSON lines")
    pred.add_argument("--output", default=None,
                      help="JSON-lines file of answers, written whole or not at all (default: stdout)")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    _common_model_args(pred)
    pred.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default 32)")
    pred.add_argument("--num-beams", type=int, default=1, help="beam search width for T5 tasks (default 1: greedy)")
    pred.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _serve_parser(sub: Any) -> None:
    """`pelt serve`: an HTTP server for many task adapters on one backbone."""
    from pelt.serve.server import API_KEY_ENV, ServerSettings

    defaults = ServerSettings()
    serve = sub.add_parser("serve", help="an HTTP server answering many task adapters on one backbone, requests of "
                                         "any mix of tasks batched together")
    serve.add_argument("--adapters", nargs="+", default=[], metavar="[NAME=]DIR",
                       help="adapter folders to serve, named by their task or NAME=DIR")
    serve.add_argument("--adapter-root", default=None,
                       help="the folder adapters may be loaded from at run time (POST /admin/tasks); none outside it")
    serve.add_argument("--state-dir", default=None,
                       help="where the set of loaded tasks is kept across restarts (default: "
                            "<adapter-root>/.pelt-serve)")
    serve.add_argument("--model", default=None,
                       help="local folder or hub name of the backbone (default: the one the adapters were trained "
                            "on; the bundled all-MiniLM-L6-v2 when none is given)")
    serve.add_argument("--host", default=defaults.host, help=f"address to bind (default {defaults.host}; another "
                                                             "needs an API key)")
    serve.add_argument("--port", type=int, default=defaults.port, help=f"default {defaults.port}; 0: a free port")
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"required on every request when set (default: ${API_KEY_ENV})")
    serve.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                       help=f"inputs gathered into one batch (default {defaults.max_batch_size})")
    serve.add_argument("--forward-batch-size", type=int, default=None,
                       help="inputs per forward pass within a batch, sorted by length (default: 8 on a CPU, the "
                            "whole batch on a GPU)")
    serve.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                       help=f"how long a batch waits to fill (default {defaults.max_wait_ms:g} ms)")
    serve.add_argument("--max-inputs", type=int, default=defaults.max_inputs,
                       help=f"inputs per request (default {defaults.max_inputs})")
    serve.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                       help=f"request body size (default {defaults.max_body_bytes:,})")
    serve.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars,
                       help=f"characters per text field (default {defaults.max_text_chars:,})")
    serve.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                       help=f"seconds a request may wait for its answer (default {defaults.request_timeout_s:g})")
    serve.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


def _params_parser(sub: Any, method_name: str | None) -> None:
    """`pelt params`: the trainable-parameter table of a configuration and method."""
    from pelt.methods import get_method

    params = sub.add_parser("params", help="trainable-parameter table for a model configuration and method")
    params.add_argument("--model", default=None,
                        help="known size (bert-base-uncased, t5-base, ...), a config.json or model folder, or a hub name")
    params.add_argument("--method", default="hadamard")
    params.add_argument("--num-labels", type=int, default=2, help="classes of the task head (encoders)")
    params.add_argument("--json", action="store_true")
    if method_name:
        _add_method_options(params, get_method(method_name).config_class)


def _methods_parser(sub: Any) -> None:
    """`pelt methods`."""
    sub.add_parser("methods", help="list the available methods")


def _sweep_parser(sub: Any) -> None:
    """`pelt sweep`: a resumable grid of `pelt train` runs."""
    sweep = sub.add_parser("sweep", help="run a grid of methods x tasks x learning rates x seeds (resumable)")
    sweep.add_argument("--grid-dir", required=True, help="where results.jsonl, the runs and the report go")
    sweep.add_argument("--methods", nargs="+", required=True,
                       help="methods, each name or name:key=value:... (e.g. hadamard compacter++ prompt-tuning:init=vocab)")
    sweep.add_argument("--tasks", nargs="+", required=True)
    sweep.add_argument("--lrs", nargs="+", default=["ref"],
                       help="learning rates: numbers, or ref, ref*10, ref/10 (the method's reference learning rate)")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[42])
    sweep.add_argument("--train-sizes", nargs="+", type=int, default=None,
                       help="training-set sizes (seeded subsamples) for every task (with --low-resource: "
                            "100 500 1000 2000 4000 unless given)")
    sweep.add_argument("--max-train-samples", nargs="+", default=[], metavar="TASK=N",
                       help="one training-set size per task, e.g. sst2=2000")
    sweep.add_argument("--low-resource", action="store_true",
                       help="the Compacter paper's low-resource runs: epochs per size (100: 1000, 500: 200, 1000: 100, "
                            "2000: 50, 4000: 25), evaluation every 250 steps unless --eval-steps says otherwise")
    sweep.add_argument("--eval-steps", type=int, default=None,
                       help="evaluate every N steps (default: every epoch; with --low-resource, 250)")
    _common_model_args(sweep)
    sweep.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))
    sweep.add_argument("--split-protocol", choices=["standard", "compacter"], default="compacter",
                       help="compacter (default): learning rates picked on validation, test reported")
    sweep.add_argument("--train-args", default="", help="further `pelt train` flags for every run, quoted")
    sweep.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    sweep.add_argument("--jobs", type=int, default=1,
                       help="runs at once (default 1), e.g. several runs of a small model on one GPU; without "
                            "--devices they share the visible devices; each gets an equal share of the cores "
                            "(OMP_NUM_THREADS, unless set); their times are then measured side by side")
    sweep.add_argument("--devices", nargs="+", default=None, metavar="ID",
                       help="CUDA device ids to spread the job slots over, cycled (e.g. --jobs 8 --devices 0 1 2 3: "
                            "two runs per GPU); each run sees its own device alone")
    sweep.add_argument("--title", default=None, help="title of the report")


def _bench_parser(sub: Any) -> None:
    """`pelt bench`: the efficiency table, each method in its own process."""
    bench = sub.add_parser("bench", help="efficiency table: trained %%, step time, throughput, peak memory, "
                                         "largest batch in a memory budget, each method in its own process")
    bench.add_argument("--methods", nargs="+", required=True,
                       help="methods (name or name:key=value:...); 'frozen' trains the head only; include full for "
                            "the ratios to it")
    _common_model_args(bench)
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--seq-len", type=int, default=128)
    bench.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--memory-budget-mb", type=float, default=None,
                       help="also find the largest batch whose peak memory fits this budget")
    bench.add_argument("--epoch-examples", type=int, default=None, help="also report minutes per epoch of N examples")
    bench.add_argument("--train-pooler", action="store_true", help="train BERT's pooler with the head (as pelt train)")
    bench.add_argument("--pooling", choices=["cls", "mean"],
                       help="replace BERT's pooler by the [CLS] state or the token mean (as pelt train)")
    bench.add_argument("--output-dir", default=None, help="write efficiency.md and efficiency.json there")


def _report_parser(sub: Any) -> None:
    """`pelt report`: tables and figures of a grid."""
    report = sub.add_parser("report", help="tables and figures of a grid (written next to its results)")
    report.add_argument("--grid-dir", required=True)
    report.add_argument("--title", default=None)


def _tasks_parser(sub: Any) -> None:
    """`pelt tasks`: the tasks, their metrics and protocol defaults (and split sizes)."""
    tasks = sub.add_parser("tasks", help="list the tasks with their metrics and protocol defaults")
    tasks.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"),
                       help="also load each task found there and print its split sizes")
    _split_args(tasks, default="standard")
    tasks.add_argument("--task", action="append", default=None, help="only these tasks")


def _add_analyze_parser(sub: Any) -> None:
    analyze = sub.add_parser("analyze", help="the Hadamard paper's analyses: attention-output norms, fitting "
                                             "functions, layer and module ablations, shared adapters")
    kinds = analyze.add_subparsers(dest="analysis", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output-dir", required=True, help="where the tables, figures (and runs) go")
        _common_model_args(parser)
        parser.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))

    finetuned_help = ("a full fine-tuning adapter folder of the task (pelt train --method full --split-protocol "
                      "compacter ...): the 'after' of the comparison")
    norms = kinds.add_parser("norms", help="per-layer norms of the self-attention outputs before and after full "
                                           "fine-tuning (the paper's Fig. 1)")
    norms.add_argument("--finetuned", required=True, help=finetuned_help)
    common(norms)
    norms.add_argument("--max-examples", type=int, default=512, help="validation examples captured")
    fit = kinds.add_parser("fit", help="fit the fine-tuned attention outputs from the base ones with several "
                                       "function classes, and score the task with the fits (the paper's Fig. 2)")
    fit.add_argument("--finetuned", required=True, help=finetuned_help)
    common(fit)
    fit.add_argument("--functions", nargs="+", default=None,
                     help="function classes (default: identity bias scalar hadamard linear mlp)")
    fit.add_argument("--fit-examples", type=int, default=512, help="training examples whose tokens are fitted")
    fit.add_argument("--heldout-examples", type=int, default=256, help="validation examples the fits are judged on")
    fit.add_argument("--mlp-steps", type=int, default=400, help="optimizer steps of the non-linear fit")
    fit.add_argument("--sequential", action="store_true",
                     help="fit layer i on its outputs with the layers below already mapped (fitting_sequential.*)")

    for name, text in (("layers", "the Hadamard adapter on the top k / bottom k layers (the paper's Fig. 4)"),
                       ("modules", "train W, b, the LayerNorm and their combinations, on all layers and on each "
                                   "layer alone (the paper's Fig. 5)")):
        parser = kinds.add_parser(name, help=text + "; a resumable grid of runs")
        parser.add_argument("--task", required=True)
        common(parser)
        parser.add_argument("--lr", type=float, default=5e-3, help="learning rate of every run (default 5e-3)")
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--max-train-samples", type=int, default=None, help="seeded training subsample")
        parser.add_argument("--split-protocol", choices=["standard", "compacter"], default="compacter")
        parser.add_argument("--train-args", default="", help="further `pelt train` flags for every run, quoted")
        parser.add_argument("--reference", default=None,
                            help="a full fine-tuning run folder (or its results.json), drawn as a line")
        parser.add_argument("--retry-failed", action="store_true")
        parser.add_argument("--report-dir", default=None,
                            help=f"where {name}.md and {name}.png go (default: the output dir)")
        if name == "layers":
            parser.add_argument("--ks", nargs="+", type=int, default=None, help="numbers of layers (default 1 ... L)")
        else:
            parser.add_argument("--module-sets", nargs="+", default=None, metavar="SET",
                                help="trained parts, e.g. W b LN W+b (default: all 7 combinations of W, b, LN)")
            parser.add_argument("--per-layer", default="all",
                                help="layers to ablate one at a time: all (default), none, or a list like 0,3-5")

    shared = kinds.add_parser("shared", help="one adapter trained on several tasks (heads separate) against one "
                                             "adapter per task, and what the per-task adapters share")
    shared.add_argument("--tasks", nargs="+", required=True)
    common(shared)
    shared.add_argument("--method", default="hadamard")
    shared.add_argument("--split-protocol", choices=["standard", "compacter"], default="compacter")
    shared.add_argument("--max-train-samples", nargs="+", default=[], metavar="TASK=N",
                        help="a training-set size per task, e.g. sst2=8000")
    shared.add_argument("--train-args", default="",
                        help="`pelt train` flags for every run (both settings), quoted; method options included")
    similarity = kinds.add_parser("similarity", help="what the adapters of several tasks share, layer by layer")
    similarity.add_argument("--adapters", nargs="+", required=True, metavar="TASK=DIR",
                            help="adapter folders of one method, named by task, e.g. rte=runs/rte/adapter")
    similarity.add_argument("--output-dir", required=True)


def _method_from_argv(argv: Sequence[str]) -> str | None:
    """The --method value, read before the full parse so that method-specific flags can be added."""
    if not argv or argv[0] not in ("train", "params"):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="hadamard")
    known, _ = pre.parse_known_args(argv[1:])
    return known.method


def _train_config(args: argparse.Namespace) -> Any:
    from pelt.train import TrainConfig

    return TrainConfig(
        output_dir=args.output_dir, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, max_length=args.max_length, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps, seed=args.seed, recipe=args.recipe,
        head_epochs=args.head_epochs, head_learning_rate=args.head_lr, max_eval_samples=args.max_eval_samples,
        eval_steps=args.eval_steps,
        target_style=args.target_style, task_prefix=args.task_prefix, overwrite=args.overwrite,
    )


def _run_settings(args: argparse.Namespace) -> Any:
    """`pelt train`'s flags of where the model and data come from, as the pipeline takes them."""
    from pelt.run_settings import RunSettings

    return RunSettings(model=args.model, data_dir=args.data_dir, max_train_samples=args.max_train_samples,
                       train_pooler=args.train_pooler, pooling=args.pooling, split_protocol=args.split_protocol,
                       split_seed=args.split_seed)


def _train(args: argparse.Namespace) -> None:
    from pelt.pipeline import finetune
    from pelt.train import TrainConfig

    method = _method_config(args, args.method)
    config = _train_config(args)

    def show(report: Any, resolved: TrainConfig) -> None:
        print(f"trainable parameters ({report.method}):\n{report.table()}\n", flush=True)
        warmup = f"{resolved.warmup_ratio:g} of the steps" if resolved.warmup_ratio is not None \
            else f"{resolved.warmup_steps} steps"
        print(f"epochs {resolved.epochs:g}, batch {resolved.batch_size}, max length {resolved.max_length}, "
              f"warm-up {warmup}, split protocol {args.split_protocol}\n", flush=True)

    from pelt.harness.sweep import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # `timeout`, a scheduler: stop as on Ctrl-C, and put an earlier run back
            results = finetune(args.task, method, config, _run_settings(args), on_start=show,
                               on_note=lambda line: print(f"pelt: {line}", flush=True))
    except KeyboardInterrupt:
        if args.overwrite and (Path(args.output_dir) / "results.json").is_file():
            where = (f"{args.output_dir} holds the run it held before (--overwrite replaces it only once the new "
                     "run finishes)")
        else:
            where = f"the last completed checkpoint (if any) is in {args.output_dir}"
        _end_progress_bars()
        print(f"\ninterrupted; {where}", file=sys.stderr)
        raise
    print(f"\n{results['task']} · {results['method']} · best checkpoint {results['best_checkpoint']}")
    for split, metrics in results["metrics"].items():
        print(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"  trained {results['parameters']['method_total']:,} method params "
          f"({results['parameters']['method_percent']:.4f}% of base) + {results['parameters']['head']:,} head; "
          f"{results['train_seconds']:.0f} s, {results['ms_per_step']} ms/step, peak {results['peak_memory_mb']} MB")
    print(f"  adapter: {args.output_dir}/adapter   results: {args.output_dir}/results.json")


def _eval(args: argparse.Namespace) -> None:
    from pelt.files import strict_json
    from pelt.pipeline import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, task=args.task, data_dir=args.data_dir, model=args.model,
                               splits=args.split, max_length=args.max_length, batch_size=args.batch_size,
                               split_protocol=args.split_protocol, split_seed=args.split_seed)
    if args.json:
        print(strict_json(metrics, indent=2))
        return
    for split, values in metrics.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))


def _adapter_arguments(values: list[str], flag: str = "--adapter") -> dict[str, str]:
    """--adapter DIR or NAME=DIR, repeated: adapter folders by task name."""
    from pelt.multitask import task_names

    named: dict[str, str] = {}
    unnamed: list[str] = []
    for value in values:
        name, sep, folder = (part.strip() for part in value.partition("="))
        if sep and not Path(value).exists():
            if not name or not folder:
                raise PeltError(f"{flag} takes DIR or NAME=DIR, got {value!r}")
            if name in named:
                raise PeltError(f"{flag} names task {name!r} twice")
            named[name] = folder
        else:
            unnamed.append(value)
    for name, folder in (task_names(unnamed) if unnamed else {}).items():
        if name in named:
            raise PeltError(f"two adapters for task {name!r}: name them with {flag} NAME=DIR")
        named[name] = folder
    return named


def _predict(args: argparse.Namespace) -> None:
    from pelt.adapter_files import read_adapter_config
    from pelt.multitask import MultiTaskModel
    from pelt.multitask.model import adapter_task, shareable_method
    from pelt.multitask.predict import TASK_FIELD, check_example, read_examples, write_jsonl

    for flag, value in (("--batch-size", args.batch_size), ("--num-beams", args.num_beams)):
        if value < 1:
            raise PeltError(f"{flag} must be at least 1, got {value}")
    if args.output == "":
        raise PeltError("--output is empty; give a file name, or leave it out for stdout")
    if args.output and args.output != "-":
        target = Path(args.output)
        if target.is_dir():
            raise PeltError(f"--output {args.output} is a folder; give a file name")
        if not target.parent.is_dir():
            what = "is a file" if target.parent.exists() else "does not exist"
            raise PeltError(f"--output {args.output}: {target.parent} {what}; give a file in an existing folder")
        if target.exists() and args.input != "-" and target.resolve() == Path(args.input).resolve():
            raise PeltError("--output is the --input file; write the answers to another file")
        if target.exists() and not args.overwrite:
            raise PeltError(f"--output {args.output} exists; pass --overwrite to replace it, or another file")
        if not os.access(target.parent, os.W_OK):
            raise PeltError(f"--output {args.output}: folder {target.parent} is not writable")
    device = _device(args.device)
    adapters = _adapter_arguments(args.adapter)
    tasks = {}
    for name, folder in adapters.items():
        config = read_adapter_config(folder)
        shareable_method(config, folder)
        tasks[name] = adapter_task(config)
        if tasks[name]["spec"] is None:
            raise PeltError(f"adapter {folder} does not record a task pelt knows, so its input fields are unknown")
    source = "<stdin>" if args.input == "-" else args.input
    examples, names = [], []
    for line, example in read_examples(args.input, args.input_format):
        name = example.get(TASK_FIELD)
        if name is not None and not isinstance(name, str):
            raise PeltError(f"{source} line {line}: the '{TASK_FIELD}' field must be a task name, got {name!r}")
        if name is None:
            if len(adapters) > 1:
                raise PeltError(f"{source} line {line}: no '{TASK_FIELD}' field; with several adapters each line names "
                                f"its task: {', '.join(adapters)}")
            name = next(iter(adapters))
        if name not in adapters:
            raise PeltError(f"{source} line {line}: unknown task {name!r}; loaded: {', '.join(adapters)}")
        problem = check_example(example, tasks[name]["spec"], tasks[name]["kind"])
        if problem:
            raise PeltError(f"{source} line {line}: {problem}")
        examples.append(example)
        names.append(name)
    mt = MultiTaskModel.from_adapters(adapters, model=args.model).to(device)
    answers = mt.predict(examples, names, batch_size=args.batch_size, num_beams=args.num_beams,
                         progress=args.input != "-")
    write_jsonl(args.output, answers)
    if args.output and args.output != "-":
        print(f"{len(answers)} answers ({', '.join(sorted(set(names)))}) in {args.output}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> None:
    from pelt.serve import ServerSettings, TaskServer, run
    from pelt.serve.app import base_url, listening_socket

    settings = ServerSettings(host=args.host, port=args.port, adapter_root=args.adapter_root,
                              state_dir=args.state_dir, api_key=args.api_key, model=args.model,
                              max_batch_size=args.max_batch_size, forward_batch_size=args.forward_batch_size,
                              max_wait_ms=args.max_wait_ms,
                              max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
                              max_text_chars=args.max_text_chars, request_timeout_s=args.request_timeout)
    settings.validate()  # before any model loads
    device = _device(args.device)
    sock = listening_socket(settings.host, settings.port)  # a port in use is said before the model loads
    try:
        server = TaskServer(_adapter_arguments(args.adapters, "--adapters") if args.adapters else {}, settings)
    except BaseException:
        sock.close()
        raise
    server.model.to(device)
    names = sorted(server.model.tasks)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "") or "none yet"
    print(f"pelt: serving {len(names)} tasks ({shown}) on {base_url(sock)}", file=sys.stderr, flush=True)
    run(server, access_log=args.access_log, sock=sock)


def _device(name: str | None) -> Any:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PeltError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PeltError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PeltError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise PeltError(f"--device {name}: pelt predicts on cpu or cuda")
    return device


def _params(args: argparse.Namespace) -> None:
    from pelt.pipeline import count_parameters_for

    report = count_parameters_for(args.model, _method_config(args, args.method), num_labels=args.num_labels)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())


def _methods(_: argparse.Namespace) -> None:
    from pelt.methods import METHODS

    width = max(map(len, METHODS))
    for name in sorted(METHODS):
        print(f"{name:<{width}}  {METHODS[name].description}")


def _task_sizes(args: argparse.Namespace) -> dict[str, list[int | None]]:
    from pelt.harness.grid import LOW_RESOURCE_EPOCHS
    from pelt.tasks import get_task

    default = list(LOW_RESOURCE_EPOCHS) if args.low_resource else [None]
    sizes: dict[str, list[int | None]] = {get_task(t).name: list(args.train_sizes or default) for t in args.tasks}
    for task, count in _named_values(args.max_train_samples, "--max-train-samples", number=True).items():
        sizes[task] = [count]
    return sizes


def _sweep_specs(args: argparse.Namespace) -> list[Any]:
    from pelt.harness import expand_grid
    from pelt.harness.grid import LOW_RESOURCE_EVAL_STEPS

    eval_steps = args.eval_steps
    if eval_steps is None and args.low_resource:
        eval_steps = LOW_RESOURCE_EVAL_STEPS
    return expand_grid(args.methods, args.tasks, args.lrs, args.seeds, _task_sizes(args),
                       low_resource=args.low_resource, eval_steps=eval_steps)


def _split_train_args(text: str) -> list[str]:
    import shlex

    try:
        extra = shlex.split(text)
    except ValueError as e:
        raise PeltError(f"--train-args {text!r}: {e}; give the flags as one quoted string, e.g. "
                        "--train-args \"--epochs 3 --batch-size 32\"") from None
    if any(t in ("-h", "--help") for t in extra):
        raise PeltError("--train-args cannot hold --help; `pelt train --method NAME --help` lists the flags")
    return extra


def _checked_train_args(text: str, methods: set[str], task: str) -> list[str]:
    """--train-args as `pelt train` flags, checked against each method's `pelt train` before any run starts (a typo
    would otherwise fail every run of a grid, one after the other)."""
    extra = _split_train_args(text)
    for method in sorted(methods):
        try:
            parsed = _build_parser(method, _RaisingParser).parse_args(
                ["train", "--task", task, "--output-dir", "run", "--method", method, *extra])
            _method_config(parsed, method)  # values as each run will check them: --alpha nan, --weight-decay -1
            _train_config(parsed).validate()
        except PeltError as e:
            raise PeltError(f"--train-args for method {method}: {e}") from None
    return extra


def _sweep(args: argparse.Namespace) -> int:
    from pelt.harness import GridSettings, run_grid, write_report
    from pelt.harness.sweep import sigterm_as_interrupt

    if args.jobs < 1:
        raise PeltError(f"--jobs must be at least 1, got {args.jobs}")
    specs = _sweep_specs(args)
    settings = GridSettings(args.data_dir, args.model, args.split_protocol,
                            _checked_train_args(args.train_args, {s.method for s in specs}, specs[0].task))
    with sigterm_as_interrupt():
        records = run_grid(specs, args.grid_dir, settings, retry_failed=args.retry_failed, jobs=args.jobs,
                           devices=args.devices, log=lambda line: print(line, flush=True))
    where = Path(args.grid_dir) / "results.jsonl"
    if any(r.get("status") == "ok" for r in records):
        title = args.title or f"Grid {Path(args.grid_dir).name}"
        where = write_report(records, args.grid_dir, title=title)
        print(f"report: {where}")
    keys = {s.key for s in specs}
    failed = [r for r in records if r["key"] in keys and r.get("status") == "failed"]
    if failed:
        print(f"pelt: {len(failed)} of {len(specs)} runs failed (their errors are in {where}); fix the cause and "
              "rerun the command with --retry-failed", file=sys.stderr)
        return EXIT_RUNS_FAILED
    return 0


def _bench(args: argparse.Namespace) -> None:
    from functools import partial

    from pelt.files import make_writable_folder
    from pelt.harness.efficiency import efficiency_table, markdown, save_efficiency

    if args.output_dir is not None:  # before the first method is measured, not after
        make_writable_folder(args.output_dir, "--output-dir")
    shown = [a for i, a in enumerate(args.argv)  # the output folder is where the table is, not how it was made
             if a != "--output-dir" and (i == 0 or args.argv[i - 1] != "--output-dir")]
    command = " ".join(["pelt", *(a if a and " " not in a else repr(a) for a in shown)])
    table = partial(markdown, memory_budget_mb=args.memory_budget_mb, epoch_examples=args.epoch_examples)
    save = partial(save_efficiency, args.output_dir, command=command, methods=len(args.methods), table=table) \
        if args.output_dir else None
    rows = efficiency_table(args.methods, args.model, batch_size=args.batch_size, seq_len=args.seq_len,
                            steps=args.steps, warmup=args.warmup, memory_budget_mb=args.memory_budget_mb,
                            epoch_examples=args.epoch_examples, train_pooler=args.train_pooler,
                            pooling=args.pooling, log=lambda line: print(line, file=sys.stderr), on_row=save)
    print(table(rows))


def _report(args: argparse.Namespace) -> None:
    from pelt.harness import RESULTS_NAME, read_records, write_report

    path = Path(args.grid_dir) / RESULTS_NAME
    if not path.is_file():
        raise PeltError(f"{path} not found; pass the --grid-dir a `pelt sweep` wrote")
    print(write_report(read_records(path), args.grid_dir, title=args.title or f"Grid {Path(args.grid_dir).name}"))


def _named_values(items: list[str], flag: str, *, number: bool) -> dict[str, Any]:
    """['sst2=2000', ...] -> {'sst2': 2000}; task names checked."""
    from pelt.tasks import get_task

    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip() or (number and not (value.strip().isdigit() and int(value) > 0)):
            kind = "N with N a positive integer" if number else "DIR"
            raise PeltError(f"{flag} takes TASK={kind}, got {item!r}")
        values[get_task(key.strip()).name] = int(value) if number else value.strip()
    return values


def _layer_list(text: str) -> list[int]:
    from pelt.methods.base import parse_int_list

    try:
        return parse_int_list(text)
    except ValueError:
        raise PeltError(f"--per-layer takes all, none or a list of layers like 0,3-5, got {text!r}") from None


def _analyze(args: argparse.Namespace) -> None:
    {"norms": _analyze_norms, "fit": _analyze_fit, "layers": _analyze_ablation, "modules": _analyze_ablation,
     "shared": _analyze_shared, "similarity": _analyze_similarity}[args.analysis](args)


def _analyze_norms(args: argparse.Namespace) -> None:
    from pelt import analysis

    result = analysis.analyze_attention_norms(args.finetuned, args.output_dir, data_dir=args.data_dir,
                                              model=args.model, max_examples=args.max_examples)
    print(f"{result['task']}: {result['tokens']:,} tokens; most changed layer {result['most_changed_layer']}")
    print(Path(args.output_dir) / "attention_norms.md")


def _analyze_fit(args: argparse.Namespace) -> None:
    from pelt import analysis

    analysis.analyze_fitting(args.finetuned, args.output_dir, data_dir=args.data_dir, model=args.model,
                             functions=args.functions, fit_examples=args.fit_examples,
                             heldout_examples=args.heldout_examples, mlp_steps=args.mlp_steps,
                             sequential=args.sequential)
    print(Path(args.output_dir) / ("fitting_sequential.md" if args.sequential else "fitting.md"))


def _analyze_ablation(args: argparse.Namespace) -> None:
    from pelt import analysis
    from pelt.harness import GridSettings

    layers, modules = args.analysis == "layers", args.analysis == "modules"
    per_layer = None if not modules or args.per_layer == "all" else [] if args.per_layer == "none" else \
        _layer_list(args.per_layer)
    sets = [tuple(part.strip() for part in text.split("+")) for text in args.module_sets or []] if modules else []
    settings = GridSettings(args.data_dir, args.model, args.split_protocol,
                            _checked_train_args(args.train_args, {"hadamard"}, args.task))
    print(analysis.ablation_study(args.analysis, args.task, args.output_dir, settings, learning_rate=args.lr,
                                  seed=args.seed, train_size=args.max_train_samples,
                                  ks=args.ks if layers else None, module_sets=sets or None, per_layer=per_layer,
                                  reference=args.reference, report_dir=args.report_dir,
                                  retry_failed=args.retry_failed))


def _analyze_shared(args: argparse.Namespace) -> None:
    from pelt import analysis
    from pelt.run_settings import RunSettings

    sizes = _named_values(args.max_train_samples, "--max-train-samples", number=True)
    train_argv = ["train", "--task", args.tasks[0], "--method", args.method, "--output-dir", args.output_dir,
                  *_split_train_args(args.train_args)]
    try:
        train_args = _build_parser(args.method, _RaisingParser).parse_args(train_argv)
    except PeltError as e:
        raise PeltError(f"--train-args: {e}") from None
    settings = RunSettings(model=args.model, data_dir=args.data_dir, max_train_samples=sizes or None,
                           train_pooler=train_args.train_pooler, pooling=train_args.pooling,
                           split_protocol=args.split_protocol)
    print(analysis.analyze_shared(args.tasks, _method_config(train_args, args.method), _train_config(train_args),
                                  args.output_dir, settings))


def _analyze_similarity(args: argparse.Namespace) -> None:
    from pelt import analysis

    adapters = _named_values(args.adapters, "--adapters", number=False)
    print(analysis.write_similarity_report(analysis.adapter_similarity(adapters), args.output_dir))


def _split_sizes(task: str, args: argparse.Namespace) -> str:
    """Rows per split; a split that cannot load says why, the others still show."""
    from pelt.tasks.data import split_sizes

    parts = []
    for split, size in split_sizes(task, args.data_dir, protocol=args.split_protocol,
                                   split_seed=args.split_seed).items():
        if isinstance(size, int):
            parts.append(f"{split} {size:,}")
        elif args.task:  # asked for by name: say exactly what is wrong
            raise size
        else:
            missing = "not found" in str(size) or "neither" in str(size)
            parts.append(f"{split} missing" if missing else f"{split} unreadable ({size})")
    return ", ".join(parts)


def _tasks(args: argparse.Namespace) -> None:
    from pelt.tasks import get_task, list_tasks, protocol_defaults

    names = [get_task(t).name for t in args.task] if args.task else list_tasks()
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        what = "is a file" if Path(args.data_dir).exists() else "does not exist"
        raise PeltError(f"--data-dir {args.data_dir} {what}; pass the folder holding the tasks' data (glue/, "
                        "superglue/, or the task folders such as SST-2/)")
    print(f"{'task':<14} {'benchmark':<9} {'main metric':<21} {'epochs':>6} {'batch':>5} {'length':>6} "
          f"{'warm-up':>7}" + ("  rows (" + args.split_protocol + " splits)" if args.data_dir else ""))
    for name in names:
        spec, defaults = get_task(name), protocol_defaults(name)
        line = (f"{name:<14} {spec.benchmark:<9} {spec.main_metric:<21} {defaults['epochs']:>6} "
                f"{defaults['batch_size']:>5} {defaults['max_length']:>6} {defaults['warmup_steps']:>7}")
        if args.data_dir:
            line += "  " + _split_sizes(name, args)
        print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ours = not _process_group_active()  # a group the caller started is the caller's to end
    code = 0
    try:
        with warnings.catch_warnings():  # the caller's warning settings are back when main returns
            warnings.showwarning = _pelt_warnings_as_lines(warnings.showwarning)
            parser = _build_parser(_method_from_argv(argv))
            args = parser.parse_args(argv)
            args.argv = argv
            commands = {"train": _train, "eval": _eval, "predict": _predict, "serve": _serve, "params": _params,
                        "methods": _methods, "tasks": _tasks, "sweep": _sweep, "report": _report, "bench": _bench,
                        "analyze": _analyze}
            code = commands[args.command](args) or 0
    except PeltError as e:
        _end_progress_bars()
        print(f"pelt: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except OSError as e:  # a full disk, a folder that became unwritable: what happened, in one line
        from pelt.files import os_error_line

        _end_progress_bars()
        print(f"pelt: error: {os_error_line(e)}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if ours:
        _release_process_group(finished=code == 0)
    return code


def _end_progress_bars() -> None:
    """Close the progress bars an error cut short, so that the error starts a line of its own (a bar ends with a
    carriage return, not a newline) and no bar is redrawn after it."""
    bar_class = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    bars = list(getattr(bar_class, "_instances", ()))
    for bar in sorted(bars, key=lambda b: -abs(getattr(b, "pos", 0))):  # nested bars first: each clears its line
        try:
            bar.close()
        except Exception:  # noqa: BLE001 (a bar that cannot close must not hide the error)
            pass


def _pelt_warnings_as_lines(show: Callable[..., None]) -> Callable[..., None]:
    """A PeltWarning is for the user: one line like the errors, not Python's file:line form."""
    def show_pelt_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          file: Any = None, line: str | None = None) -> None:
        if issubclass(category, PeltWarning):
            print(f"pelt: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_pelt_warning


def _process_group_active() -> bool:
    if "torch" not in sys.modules:  # nothing distributed can have started
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _release_process_group(finished: bool) -> None:
    """Tear down the process group the command's training set up under torchrun / accelerate, if any.

    Left to the interpreter's exit, a gloo rank can abort ("terminate called without an active exception") after
    its work is done. Ranks that finished wait for each other first; after an error no rank waits, as another one
    may never arrive.
    """
    if _process_group_active():
        import torch.distributed as dist

        if finished:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
