"""Where the time goes: onnxruntime's per-op-type kernel time for ONNX graphs at one shape.

    python benchmarks/profile_ops.py runs/bench/dense-*/model_ort.onnx runs/onnx/mrpc-0.5/model_fused.onnx \
        runs/onnx/mrpc-0.25/model_fused.onnx --tokenizer runs/onnx/mrpc-0.5 --out benchmarks/results/latency_cpu_ops

Each graph is profiled in its own process (onnxruntime's profiler, CPU provider, all graph
optimisations), over ``--runs`` runs after warm-up; times are kernel times per run, summed per op type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys

from peft_rankdyna.io import portable_command


def profile(path: str, tokenizer_dir: str, batch_size: int, seq_len: int, runs: int, threads: int,
            provider: str = "CPUExecutionProvider") -> dict[str, float]:
    """Milliseconds per run of each op type's kernels (this process).

    On CUDA onnxruntime times each node's launch on the host (its kernels run asynchronously), so
    the per-op times show where the launches go, not the device time; read them with that in mind."""
    from transformers import AutoTokenizer

    from rankdyna_exporters.runtime import create_session
    from rankdyna_exporters.validation import tokenised_inputs

    session = create_session(path, provider, threads,
                             profile_prefix=os.path.join(os.path.dirname(os.path.abspath(path)), "ort_profile"))
    feeds = tokenised_inputs(AutoTokenizer.from_pretrained(tokenizer_dir), batch_size, seq_len,
                             [i.name for i in session.get_inputs()])
    warmup = 5
    for _ in range(warmup + runs):
        session.run(None, feeds)
    trace = session.end_profiling()
    with open(trace, encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(trace)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    timed_from = starts[warmup]  # the warm-up runs are left out
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(totals.most_common())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+")
    parser.add_argument("--tokenizer", required=True, help="folder with the tokenizer (an export folder)")
    parser.add_argument("--out", required=True, help="results path without extension")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(profile(args.graphs[0], args.tokenizer, args.batch_size, args.seq_len, args.runs,
                                 args.threads)))
        return 0
    results = {}
    for graph in args.graphs:
        command = [sys.executable, __file__, graph, "--worker", "--tokenizer", args.tokenizer, "--out", args.out,
                   "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--runs", str(args.runs),
                   "--threads", str(args.threads)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[graph] = json.loads(output.strip().splitlines()[-1])
    kinds = sorted({op for ops in results.values() for op in ops},
                   key=lambda op: -max(r.get(op, 0.0) for r in results.values()))
    # Columns and command name the graphs below their common folder ($WORK_DIR), so no machine's paths show.
    root = os.path.commonpath([os.path.abspath(g) for g in args.graphs + [args.tokenizer]])
    names = [os.path.relpath(os.path.abspath(g), root) for g in results]
    lines = ["| op type | " + " | ".join(names) + " |", "|---|" + "---|" * len(results)]
    for op in kinds:
        lines.append(f"| {op} | " + " | ".join(f"{r.get(op, 0.0):.2f}" for r in results.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(r.values()):.2f}**" for r in results.values()) + " |")
    command_text = f"python {portable_command(sys.argv, {root: '$WORK_DIR'})}"
    text = (f"Kernel milliseconds per run by op type, batch {args.batch_size} × seq {args.seq_len}, "
            f"{args.runs} runs, {args.threads} threads, CPU provider.\n\n" + "\n".join(lines)
            + f"\n\nCommand: `{command_text}`\n")
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({"command": command_text, "ms_per_run": dict(zip(names, results.values()))}, handle, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
