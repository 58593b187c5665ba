"""When a factored layer is faster: a rank-r factor pair against the dense matrix, fp32 and int8, on the CPU.

    python benchmarks/int8_matmul.py --out benchmarks/results/int8_matmul

A compact model replaces a K×N matrix by a K×r and an r×N factor: r·(K+N) instead of K·N
multiply-adds per token. Whether that is faster depends on how well the runtime multiplies the
thinner matrices. For each matrix shape (all-MiniLM-L6-v2's by default: 384×384 for attention,
384×1536 and 1536×384 for the feed-forward layers) and each rank, this times one onnxruntime graph
of the dense MatMul and one of the two chained factor MatMuls, on ``--tokens`` rows, in fp32 and
after dynamic int8 quantization as ``rankdyna export --int8`` does it (int8 weights, one scale per
output channel; uint8 activations per batch), in ``--repeats`` repeats of ``--runs`` runs each, the four
graphs of a shape and rank in a new shuffled order each repeat (median reported).
A ratio below 1 is a factor pair faster than its dense matrix; the rank where it reaches 1 is the
break-even rank of that precision. Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from peft_rankdyna.io import portable_command


def matmul_graph(shapes: Sequence[tuple[int, int]], path: str, seed: int = 0) -> str:
    """Save a graph ``X @ W0 @ W1 ...`` (weights of ``shapes``, random) at ``path``; returns the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), f"W{i}")
               for i, shape in enumerate(shapes)]
    names = ["X", *(f"H{i}" for i in range(len(shapes) - 1)), "Y"]
    nodes = [helper.make_node("MatMul", [names[i], f"W{i}"], [names[i + 1]]) for i in range(len(shapes))]
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", shapes[0][0]])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", shapes[-1][1]])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def quantized(path: str) -> str:
    """The graph at ``path`` dynamically quantized as ``rankdyna export --int8`` quantizes (Optimum's avx512_vnni
    preset: int8 symmetric weights, one scale per output channel; uint8 activations per batch), saved beside it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.replace(".onnx", "_int8.onnx")
    quantize_dynamic(path, out, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"],
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return out


def session(path: str, threads: int) -> Any:
    """An onnxruntime CPU session of the graph at ``path`` (all graph optimisations, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def milliseconds(graphs: dict[str, str], tokens: int, threads: int, runs: int, repeats: int,
                 seed: int = 0) -> dict[str, float]:
    """Each graph's median over ``repeats`` of the mean milliseconds of a run on ``tokens`` rows; every repeat
    times all graphs in a new shuffled order, so a slower moment of a shared machine falls on each alike."""
    sessions = {name: session(path, threads) for name, path in graphs.items()}
    feeds = {name: {"X": np.random.default_rng(1).standard_normal((tokens, s.get_inputs()[0].shape[1]))
                    .astype(np.float32)} for name, s in sessions.items()}
    for name, s in sessions.items():  # warm-up
        for _ in range(max(runs // 10, 3)):
            s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order = random.Random(seed)
    for _ in range(repeats):
        names = list(sessions)
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            for _ in range(runs):
                sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - start) / runs * 1e3)
    return {name: statistics.median(found) for name, found in times.items()}


def measure(args: argparse.Namespace, folder: str) -> list[dict[str, Any]]:
    """One row per matrix shape and rank: dense and factored milliseconds in both precisions, timed together."""
    shapes = [(args.hidden, args.hidden), (args.hidden, args.intermediate), (args.intermediate, args.hidden)]
    rows = []
    for k, n in shapes:
        dense = matmul_graph([(k, n)], os.path.join(folder, f"dense_{k}x{n}.onnx"))
        dense_int8 = quantized(dense)  # once per shape; timed again beside each rank's pair
        for rank in (r for r in args.ranks if r < min(k, n)):
            pair = matmul_graph([(k, rank), (rank, n)], os.path.join(folder, f"pair_{k}x{n}_r{rank}.onnx"))
            graphs = {"fp32_dense": dense, "int8_dense": dense_int8, "fp32_pair": pair, "int8_pair": quantized(pair)}
            ms = milliseconds(graphs, args.tokens, args.threads, args.runs, args.repeats)
            rows.append({"shape": [k, n], "rank": rank, "flop_fraction": rank * (k + n) / (k * n),
                         **{f"{p}_{kind}_ms": ms[f"{p}_{kind}"] for p in ("fp32", "int8") for kind in ("dense", "pair")},
                         **{f"{p}_ratio": ms[f"{p}_pair"] / ms[f"{p}_dense"] for p in ("fp32", "int8")}})
            print(f"{k}x{n} rank {rank}: fp32 {rows[-1]['fp32_ratio']:.2f}×, int8 {rows[-1]['int8_ratio']:.2f}× "
                  "of the dense matrix", flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The rows as a table, with what they were measured on and the command."""
    lines = ["# A factor pair against its dense matrix: fp32 and dynamic int8 on the CPU", "",
             f"{result['tokens']} rows (tokens) a run, {result['threads']} threads, median of {result['repeats']} "
             f"repeats of {result['runs']} runs; onnxruntime {result['onnxruntime']} on {result['cpus']} CPUs "
             f"(1-minute load average {result['load_average_1min']:.2f} at the start). "
             "Ratio: the pair's time over the dense matrix's in the same precision (below 1: the factored layer "
             "is faster). FLOPs: the pair's multiply-adds over the dense matrix's.", "",
             "| matrix | rank | FLOPs | fp32 dense ms | fp32 pair ms | fp32 ratio | int8 dense ms | int8 pair ms "
             "| int8 ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        k, n = row["shape"]
        lines.append(f"| {k}×{n} | {row['rank']} | {row['flop_fraction']:.2f} | {row['fp32_dense_ms']:.3f} | "
                     f"{row['fp32_pair_ms']:.3f} | {row['fp32_ratio']:.2f} | {row['int8_dense_ms']:.3f} | "
                     f"{row['int8_pair_ms']:.3f} | {row['int8_ratio']:.2f} |")
    return "\n".join(lines + ["", f"Command: `{result['command']}`", ""])


def build_parser() -> argparse.ArgumentParser:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="results path without extension (.json and .md)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 96, 128, 192, 256])
    parser.add_argument("--tokens", type=int, default=1280, help="rows a run: batch × padded length (32 × 40)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Time every shape and rank, write OUT.json and OUT.md, print the table."""
    import onnxruntime

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    load = os.getloadavg()[0]  # other work on the machine while this ran, for the reader to weigh the times
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(args, folder)
    result = {"rows": rows, "tokens": args.tokens, "threads": args.threads, "runs": args.runs,
              "repeats": args.repeats, "onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(),
              "load_average_1min": load, "command": "python " + portable_command([os.path.abspath(__file__), *argv])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    text = markdown(result)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
