"""Load every GLUE and SuperGLUE task found in a data root and record its rows per split, under both protocols.

    python benchmarks/data_rows.py --data-dir ../shared/data

Writes benchmarks/results/data_rows.md: the output of `pelt tasks --data-dir DIR` for the standard splits and
for the Compacter split protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

from pelt.cli import main as pelt

RESULTS = Path(__file__).resolve().parent / "results"


def tasks_table(data_dir: str, protocol: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = pelt(["tasks", "--data-dir", data_dir, "--split-protocol", protocol])
    if code:
        raise SystemExit(code)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"), required=False)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("pass --data-dir (a data root holding glue/ and superglue/) or set PELT_DATA_DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lines = ["# Rows per split of every task in the data folder", "",
             "Produced by `python benchmarks/data_rows.py --data-dir <data root>` (`pelt tasks --data-dir ...`).",
             "MultiRC rows are answer options (5,131 training questions in 456 paragraphs; dev 953 questions in 83",
             "paragraphs); \"missing\" splits are not in the folder (QQP, MNLI, QNLI train, BoolQ train, ReCoRD, WiC",
             "are not available offline here; they load from the hub by name).", ""]
    for protocol in ("standard", "compacter"):
        lines += [f"## `--split-protocol {protocol}`", "", "```", tasks_table(args.data_dir, protocol).rstrip(), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_rows.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
