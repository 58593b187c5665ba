"""Latency of compact ONNX graphs against the dense model, on one execution provider, in one run.

    python benchmarks/latency.py runs/mrpc-0.5/compact runs/mrpc-0.25/compact --dense-model $MODEL \
        --out benchmarks/results/latency_cpu

Exports each compact folder (``rankdyna export``, into ``--work-dir``) unless it is already
exported there, then runs ``rankdyna bench`` on all of them together: PyTorch eager dense, the
dense ONNX graph (raw and onnxruntime-optimized), and every compact graph; a fresh process per
variant, shuffled rounds, medians. Writes ``OUT.json`` and ``OUT.md`` with the command.
"""

from __future__ import annotations

import argparse
import os
import sys

from peft_rankdyna.jobs.cli import main as rankdyna
from peft_rankdyna.io import portable_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compact", nargs="+", help="compact model folders")
    parser.add_argument("--dense-model", required=True)
    parser.add_argument("--out", required=True, help="results path without extension")
    parser.add_argument("--work-dir", default="runs/onnx", help="where the exports go (default runs/onnx)")
    parser.add_argument("--fp16", action="store_true", help="export and time the fp16 graph too (CUDA)")
    args, bench_args = parser.parse_known_args()
    exports = []
    for folder in args.compact:
        name = os.path.basename(os.path.dirname(os.path.normpath(folder))) or os.path.basename(folder)
        target = os.path.join(args.work_dir, name)
        if not os.path.isfile(os.path.join(target, "rankdyna_export.json")):
            code = rankdyna(["export", folder, target, *(["--fp16"] if args.fp16 else [])])
            if code:
                return code
        exports.append(target)
    print(f"python {portable_command(sys.argv, {args.dense_model: '$MODEL'})}")
    return rankdyna(["bench", *exports, "--dense-model", args.dense_model, "--out", args.out,
                     "--choose", "8", "128", *bench_args])


if __name__ == "__main__":
    sys.exit(main())
