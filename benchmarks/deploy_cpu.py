"""The CPU deployment table: what a CPU user would pick instead against RankDyna's graphs, in one place.

    python benchmarks/deploy_cpu.py --runs $RUNS --tasks mrpc sst2 --seeds 42 43 --glue-dir $GLUE_DIR \
        --out benchmarks/results/deploy_cpu --work-dir $WORK_DIR

``--runs`` is the GLUE grid's work folder (``benchmarks/glue.py run --work-dir``): for every task and
seed it must hold the dense cell's ``finetuned/`` model and RankDyna's ``compact/`` model at each
budget, trained with the grid's settings. Per task and seed, each compact model is exported with
``rankdyna export --int8``, and again after ``rankdyna trim-vocab`` to the task's training text; the
dense model is exported by Optimum and quantized with the same int8 settings (by ``rankdyna bench``).
Every graph is scored on the dev set with onnxruntime, and one ``rankdyna bench`` run times them all
side by side (fresh process per variant, shuffled rounds, medians) at batch 1, 8 and 32 × 128.
Writes ``OUT.json``, ``OUT.md`` (means over seeds) and ``OUT.png`` (dev metric against batch-8
latency, marker area = file size). ``--prepare-only`` makes the graphs and stops, so the slow part
can run beside other work and the timed run, which reuses them, alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from peft_rankdyna.jobs.cli import main as rankdyna
from peft_rankdyna.jobs.data.glue import get_task
from peft_rankdyna.io import atomic_write_text, portable_command
from rankdyna_exporters.bench import ONNX_DENSE_INT8, ONNX_DENSE_RAW, BenchSettings, benchmark, dense_variants
from rankdyna_exporters.layout import FILE_NAMES, FUSED, INT8
from rankdyna_exporters.runtime import create_session
from peft_rankdyna.jobs.onnx_scoring import dev_batches, dev_metrics, longest_input

BATCHES = (1, 8, 32)


def run_folder(runs: str, task: str, method: str, budget: str, seed: int) -> str:
    """The grid's output folder of one cell (``benchmarks/glue.py`` names them so)."""
    return os.path.join(runs, f"{task}-{method}-{budget}-s{seed}-lr5e-05")


def prepare(args: argparse.Namespace, task: str, seed: int) -> tuple[str, list[dict[str, Any]]]:
    """Export every compact model of one task and seed (plain and trimmed); the dense folder and the graphs."""
    dense = os.path.join(run_folder(args.runs, task, "dense", "dense", seed), "finetuned")
    needed = [dense, *(os.path.join(run_folder(args.runs, task, "rankdyna", b, seed), "compact") for b in args.budgets)]
    missing = [path for path in needed if not os.path.isdir(path)]
    if missing:
        raise SystemExit(f"Not in {args.runs}: {', '.join(missing)}. Run the grid first: python benchmarks/glue.py "
                         f"run --tasks {task} --seeds {seed} --budgets {' '.join(args.budgets)} "
                         f"--methods dense rankdyna --work-dir {args.runs}")
    work = os.path.join(args.work_dir, f"{task}-s{seed}")
    graphs = []
    for budget, compact in zip(args.budgets, needed[1:]):
        trimmed = os.path.join(work, f"rankdyna-{budget}-trimmed-compact")
        if not os.path.isdir(trimmed):
            _check(rankdyna(["trim-vocab", compact, trimmed, "--task", task, "--glue-dir", args.glue_dir]))
        for label, source in ((f"rankdyna-{budget}-trimmed", trimmed), (f"rankdyna-{budget}", compact)):
            export = os.path.join(work, label)
            if not os.path.isfile(os.path.join(export, "rankdyna_export.json")):
                bar = [] if args.int8_min_agreement is None else ["--int8-min-agreement", str(args.int8_min_agreement)]
                _check(rankdyna(["export", source, export, "--int8", "--int8-check-task", task,
                                 "--glue-dir", args.glue_dir, *bar]))
            trim = label.endswith("trimmed")
            graphs += [{"graph": f"RankDyna {budget} {'int8' if v == INT8 else 'fp32'}{', trimmed vocab' * trim}",
                        "export": export, "path": os.path.join(export, FILE_NAMES[v]), "bench_name": f"{label} {v}"}
                       for v in ([INT8] if trim else [FUSED, INT8])]
    return dense, graphs


def _check(code: int) -> None:
    if code:
        raise SystemExit(f"a rankdyna command failed (exit {code}); see above")


def collect(args: argparse.Namespace, task: str, seed: int) -> tuple[list[str], str, str, list[dict[str, Any]]]:
    """Every graph of one task and seed, made where missing: the exports, the dense folder, the work folder, the graphs."""
    from transformers import AutoConfig

    dense, graphs = prepare(args, task, seed)
    work = os.path.join(args.work_dir, f"{task}-s{seed}")
    # The timed inputs are tokenized with the first export's tokenizer: a trimmed one, whose ids fit every graph.
    exports = sorted({g["export"] for g in graphs}, key=lambda e: not e.endswith("trimmed"))
    architecture = AutoConfig.from_pretrained(exports[0]).architectures[0]
    references = {v.name: v.path for v in dense_variants(dense, architecture, get_task(task).num_labels, work)}
    graphs += [{"graph": name, "export": dense, "path": references[bench_name], "bench_name": bench_name}
               for name, bench_name in (("dense fp32", ONNX_DENSE_RAW), ("dense int8", ONNX_DENSE_INT8))]
    return exports, dense, work, graphs


def measure(args: argparse.Namespace, task: str, seed: int) -> list[dict[str, Any]]:
    """Dev metric, file size and latencies of every graph of one task and seed."""
    exports, dense, work, graphs = collect(args, task, seed)
    tokenized: dict[tuple[str, tuple[str, ...]], Any] = {}  # the dev set, once per tokenizer and input names
    for graph in graphs:
        graph.update(task=task, seed=seed, file_mib=os.path.getsize(graph["path"]) / 2**20,
                     metrics=_score(graph["path"], graph["export"], task, args.glue_dir, tokenized))
    timed = benchmark(exports, dense, BenchSettings(batch_sizes=BATCHES, rounds=args.rounds),
                      os.path.join(work, "bench"), "deploy_cpu.py", work, only={g["bench_name"] for g in graphs})
    medians = {(r["variant"], r["batch_size"]): r["median_ms"] for r in timed["rows"]}
    for graph in graphs:
        graph["median_ms"] = {b: medians[graph["bench_name"], b] for b in BATCHES}
    return graphs


def _score(path: str, tokenizer_folder: str, task: str, glue_dir: str,
           tokenized: dict[tuple[str, tuple[str, ...]], Any]) -> dict[str, float]:
    from transformers import AutoTokenizer

    session = create_session(path)
    names = tuple(i.name for i in session.get_inputs())
    if (tokenizer_folder, names) not in tokenized:
        tokenized[tokenizer_folder, names] = dev_batches(AutoTokenizer.from_pretrained(tokenizer_folder), task,
                                                         glue_dir, list(names), longest_input(tokenizer_folder))
    batches, labels = tokenized[tokenizer_folder, names]
    return dev_metrics(session, batches, labels, task)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over seeds per task and graph, with latency relative to dense int8 at batch 8."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["graph"]), []).append(row)
    table = [{"task": task, "graph": graph, "seeds": sorted(r["seed"] for r in runs),
              "metrics": {name: statistics.mean(r["metrics"][name] for r in runs) for name in runs[0]["metrics"]},
              "file_mib": statistics.mean(r["file_mib"] for r in runs),
              "median_ms": {b: statistics.mean(r["median_ms"][b] for r in runs) for b in BATCHES}}
             for (task, graph), runs in groups.items()]
    for row in table:
        reference = next(r for r in table if r["task"] == row["task"] and r["graph"] == "dense int8")
        row["vs_dense_int8_b8"] = row["median_ms"][8] / reference["median_ms"][8]
    return table


def markdown(table: list[dict[str, Any]], command: str) -> str:
    header = ["task", "graph", "dev metrics", *(f"batch {b} ms" for b in BATCHES), "vs dense int8 (b8)", "file MiB",
              "seeds"]
    lines = ["# CPU deployment: dense fp32 and int8 against RankDyna's graphs", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(table, key=lambda r: (r["task"], r["vs_dense_int8_b8"])):
        lines.append("| " + " | ".join([
            row["task"], row["graph"], " / ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()),
            *(f"{row['median_ms'][b]:.1f}" for b in BATCHES), f"{row['vs_dense_int8_b8']:.2f}",
            f"{row['file_mib']:.1f}", ", ".join(map(str, row["seeds"]))]) + " |")
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def plot(table: list[dict[str, Any]], path: str) -> None:
    """Dev metric against batch-8 latency, one panel per task; marker area = file size.

    One colour per graph in every panel and one legend for all (labels beside the points overlapped).
    """
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    tasks = sorted({r["task"] for r in table})
    graphs = sorted({r["graph"] for r in table}, key=lambda g: (not g.startswith("dense"), g))
    colors = {graph: f"C{index}" for index, graph in enumerate(graphs)}
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        task_rows = [r for r in table if r["task"] == task]
        for row in task_rows:
            metric = next(iter(row["metrics"].values()))
            axis.scatter(row["median_ms"][8], metric, s=8 * row["file_mib"], alpha=0.7, color=colors[row["graph"]],
                         marker="s" if row["graph"].startswith("dense") else "o", edgecolors="black", linewidths=0.5)
        axis.set_xlabel("median latency, batch 8 × 128 (ms)")
        axis.set_ylabel(f"dev {next(iter(task_rows[0]['metrics']))}")
        axis.set_title(f"{task}: marker area = file size")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], linestyle="", marker="s" if g.startswith("dense") else "o", color=colors[g],
                          markeredgecolor="black", markersize=8, label=g) for g in graphs]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the GLUE grid's work folder")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "sst2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--budgets", nargs="+", default=["0.5", "0.25"])
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    parser.add_argument("--rounds", type=int, default=3, help="shuffled timing rounds per bench run")
    parser.add_argument("--int8-min-agreement", type=float, default=None,
                        help="passed to rankdyna export (default: the export's own bar)")
    parser.add_argument("--out", help="results path without extension (not with --prepare-only)")
    parser.add_argument("--work-dir", default="runs/deploy_cpu")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only make the graphs (exports, trimming, dense references), e.g. while the machine is "
                             "busy; a later run without it scores and times them, alone on the machine")
    args = parser.parse_args()
    if not args.glue_dir:
        parser.error("--glue-dir (or GLUE_DIR) is needed: every graph is scored on the dev set.")
    if args.prepare_only:
        for task in args.tasks:
            for seed in args.seeds:
                print(f"{task} seed {seed}: {len(collect(args, task, seed)[3])} graphs ready", flush=True)
        return
    if not args.out:
        parser.error("--out is needed (or --prepare-only).")
    rows = [row for task in args.tasks for seed in args.seeds for row in measure(args, task, seed)]
    table = summarize(rows)
    paths = {args.runs: "$RUNS", args.work_dir: "$WORK_DIR", args.glue_dir: "$GLUE_DIR"}
    for row in rows:  # the results name no path of this machine
        row["export"], row["path"] = (portable_command([row[key]], paths) for key in ("export", "path"))
    command = "python " + portable_command(sys.argv, paths)
    atomic_write_text(args.out + ".json", json.dumps({"rows": rows, "table": table, "command": command}, indent=1))
    atomic_write_text(args.out + ".md", markdown(table, command))
    plot(table, args.out + ".png")
    print(markdown(table, command))


if __name__ == "__main__":
    main()
