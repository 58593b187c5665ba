"""The paper's comparison on GLUE: dense fine-tuning, SVD+FT, FWSVD+FT, RankDyna and its two ablations.

Run (or continue) the grid; every finished run appends one JSON line, and a rerun skips those:

    GLUE_DIR=../shared/data/glue python benchmarks/glue.py run --model $MODEL \
        --tasks mrpc cola sst2 --budgets 0.5 0.25 --seeds 42 43 --max-train-samples sst2=8000

Turn the JSON lines into ``benchmarks/results/glue.{md,json,png}``:

    python benchmarks/glue.py summarize

Each run is one ``rankdyna compress`` command in its own process (the command is recorded with the
result), so the wall time covers the whole pipeline and the peak memory is that process's maximum
resident set size. Round 1 of SVD/FWSVD + FT is dense fine-tuning under the same settings, so the
grid runs it once, as the dense cell, and starts the two-round cells from its fine-tuned model
(``--finetuned-model``); their records add the dense run's wall and CPU time, so the times still
cover both rounds. ``--no-reuse`` runs both rounds in one process instead. On a GPU with room to
spare, ``--parallel N`` runs N cells at once (their times then share the machine, and say so).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterator, Optional, Sequence

from peft_rankdyna.io import portable_command

# Method name in the table → `rankdyna compress` flags. Dense ignores the budget axis.
# The defaults before the step-scale fix (docs/results.md, "One round that collapsed"): Adam on the raw factors.
OLD_DEFAULTS = ["--factor-step-scale", "1.0", "--tinit", "0.1"]
METHOD_FLAGS = {
    "dense": ["--dense"],
    "svd": ["--method", "svd"],
    "fwsvd": ["--method", "fwsvd"],
    "rankdyna": ["--method", "rankdyna"],
    "rankdyna_old": ["--method", "rankdyna", *OLD_DEFAULTS],
    "per_matrix_old": ["--method", "rankdyna", "--allocation", "per_matrix", *OLD_DEFAULTS],
    "frozen_old": ["--method", "rankdyna", "--importance-updates", "frozen", *OLD_DEFAULTS],
    # Issue #21 §5: what of the two-round pipeline one round can borrow (each against the same-length default).
    "rankdyna_long_warmup": ["--method", "rankdyna", "--tinit", "0.3"],
    "rankdyna_long_final": ["--method", "rankdyna", "--tfinal", "0.4"],
    "rankdyna_lr_restart": ["--method", "rankdyna", "--final-lr-restart"],
    "rankdyna_self_distill": ["--method", "rankdyna", "--self-distill-weight", "1"],
}
METHOD_LABELS = {"dense": "dense fine-tuning", "svd": "SVD + FT", "fwsvd": "FWSVD + FT", "rankdyna": "RankDyna",
                 "rankdyna_old": "RankDyna, old defaults",
                 "per_matrix_old": "RankDyna, old defaults, per-matrix allocation",
                 "frozen_old": "RankDyna, old defaults, frozen importance",
                 "rankdyna_long_warmup": "RankDyna, warm-up 0.3", "rankdyna_long_final": "RankDyna, final phase 0.4",
                 "rankdyna_lr_restart": "RankDyna, LR restart at the final phase",
                 "rankdyna_self_distill": "RankDyna, self-distillation (weight 1)"}
# What the grid runs unless --methods says otherwise (the ablations ran with the old defaults).
DEFAULT_METHODS = ["dense", "svd", "fwsvd", "rankdyna", "rankdyna_old"]
TWO_ROUND_METHODS = ("svd", "fwsvd")
DEFAULT_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass(frozen=True)
class Cell:
    """One run of the grid; ``key`` identifies it in the JSON lines."""

    model: str
    task: str
    method: str
    budget: Optional[float]
    seed: int
    learning_rate: float
    epochs: float
    max_seq_length: int
    max_train_samples: Optional[int]
    max_steps: int
    # A two-round cell's first round (dense fine-tuning) at another learning rate than its second (issue #21 §4).
    first_round_lr: Optional[float] = None

    @property
    def key(self) -> str:
        """The cell's identity in the JSON lines: its settings, the model path written as ``$MODEL`` (one
        runs file holds one model's grid, and the key does not depend on the machine's paths)."""
        return json.dumps(self.portable, sort_keys=True)

    @property
    def portable(self) -> dict[str, Any]:
        """The cell's settings as recorded, the model path written as ``$MODEL``; ``first_round_lr`` only where
        it is set, so the cells recorded before it existed keep their keys."""
        fields_ = {**asdict(self), "model": "$MODEL"}
        if self.first_round_lr is None:
            del fields_["first_round_lr"]
        return fields_

    @property
    def name(self) -> str:
        budget = "dense" if self.budget is None else f"{self.budget:g}"
        first = "" if self.first_round_lr is None else f"-r1lr{self.first_round_lr:g}"
        return f"{self.task}-{self.method}-{budget}-s{self.seed}-lr{self.learning_rate:g}{first}"

    @property
    def dense(self) -> Cell:
        """The dense fine-tuning cell with the same settings: round 1 of the two-round baselines (at
        ``first_round_lr`` where it is set)."""
        return replace(self, method="dense", budget=None, learning_rate=self.first_round_lr or self.learning_rate,
                       first_round_lr=None)

    def command(self, output_dir: str, glue_dir: Optional[str], finetuned: Optional[str] = None) -> list[str]:
        """The `rankdyna compress` command line of this cell (starting from ``finetuned``: round 2 only)."""
        parts = ["rankdyna", "compress", "--model", self.model, "--task", self.task, "--output", output_dir,
                 *METHOD_FLAGS[self.method]]
        if finetuned is not None:
            parts += ["--finetuned-model", finetuned]
        if self.budget is not None:
            parts += ["--budget", f"{self.budget:g}"]
        parts += ["--seed", str(self.seed), "--lr", f"{self.learning_rate:g}", "--epochs", f"{self.epochs:g}",
                  "--max-seq-length", str(self.max_seq_length), "--max-steps", str(self.max_steps), "--no-progress"]
        if self.max_train_samples is not None:
            parts += ["--max-train-samples", str(self.max_train_samples)]
        if glue_dir:
            parts += ["--glue-dir", glue_dir]
        return parts


def grid(args: argparse.Namespace) -> Iterator[Cell]:
    """The cells in run order: seed-major, then budget-major within a task, so a partial grid has whole
    seeds of the first tasks and, within a task, every method at the first budgets."""
    samples = dict(args.max_train_samples)
    compressed = [method for method in args.methods if method != "dense"]
    first_lr = getattr(args, "first_round_lr", None)
    seen: set[str] = set()
    for seed, task, lr in itertools.product(args.seeds, args.tasks, args.lrs):
        pairs = [("dense", None)] if "dense" in args.methods else []
        pairs += [(method, budget) for budget in args.budgets for method in compressed]
        for method, budget in pairs:
            two_rounds = method in TWO_ROUND_METHODS and first_lr is not None and first_lr != lr
            cell = Cell(args.model, task, method, budget, seed, lr, args.epochs, args.max_seq_length,
                        samples.get(task), args.max_steps, first_lr if two_rounds else None)
            # A first round at another learning rate is a dense cell of its own: run it (once) before its users.
            for needed in ([cell.dense] if two_rounds else []) + [cell]:
                if needed.key not in seen:
                    seen.add(needed.key)
                    yield needed


def _task_count(text: str) -> tuple[str, int]:
    task, _, count = text.partition("=")
    if not count.isdigit():
        raise argparse.ArgumentTypeError(f"--max-train-samples takes TASK=N (e.g. sst2=8000), got {text!r}")
    return task, int(count)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE (e.g. epochs=3), got {text!r}")
    return key, value


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def read_lines(path: str) -> list[dict[str, Any]]:
    """The finished runs recorded in ``path`` (none when it does not exist yet)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_line(path: str, record: dict[str, Any]) -> None:
    """Append one record as one line and flush it to disk, so a crash loses at most the running cell."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


LIVE_RUNS: set[subprocess.Popen] = set()  # the cells' processes, stopped with the runner (`_stopping_live_runs`)


def run_cell(cell: Cell, work_dir: str, glue_dir: Optional[str], finetuned: Optional[str] = None,
             parallel: int = 1) -> dict[str, Any]:
    """Run one cell in a fresh process; its results plus wall time and peak memory of that process.

    ``parallel`` (how many cells the runner runs at once) is recorded: it inflates the times.
    """
    output_dir = os.path.join(work_dir, cell.name)
    os.makedirs(output_dir, exist_ok=True)
    command = cell.command(output_dir, glue_dir, finetuned)
    argv = [sys.executable, "-m", "peft_rankdyna.jobs.cli", *command[1:]]
    commit = git_commit()  # the code the run imports: the checkout may move on while it runs
    start = time.perf_counter()
    with open(os.path.join(output_dir, "log.txt"), "w", encoding="utf-8") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        LIVE_RUNS.add(process)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            LIVE_RUNS.discard(process)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        with open(os.path.join(output_dir, "log.txt"), encoding="utf-8") as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"{cell.name} failed (exit {process.returncode}); end of its log:\n{tail}")
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    paths = {cell.model: "$MODEL", glue_dir or "": "$GLUE_DIR", work_dir: "$WORK_DIR"}
    return {
        "key": cell.key, "cell": cell.portable, "command": portable_command(command, paths),
        "metrics": results["metrics"],
        "target_params": results.get("target_params_after"), "target_params_dense": results.get("target_params_before"),
        "model_params": results["model_params_after"], "flops_ratio": results.get("flops_ratio", 1.0),
        "pipeline_wall_s": results["wall_time_s"], "process_wall_s": wall,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,  # unaffected by pauses, unlike the wall times
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports kibibytes
        "device": results["device"], "parallel": parallel,
        "collapsed": results["collapse"]["collapsed"],
        "threads": os.environ.get("OMP_NUM_THREADS"), "host": platform.node(), "cpus": os.cpu_count(),
        **software_and_hardware(), "commit": commit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def software_and_hardware() -> dict[str, Any]:
    """The CPU model and the versions of the packages a run's numbers depend on.

    The same commit and seed give another trajectory on another CPU model or BLAS (the kernels round
    differently), so a record that cannot be reproduced says where it ran.
    """
    versions = {}
    for package in ("torch", "transformers", "accelerate", "peft"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu_model": cpu_model(), "packages": versions}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``, else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The repository's current commit (short hash), or "unknown" outside a git checkout."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def first_round(cell: Cell, done: dict[str, dict[str, Any]], work_dir: str) -> Optional[dict[str, Any]]:
    """The finished dense run a two-round cell can start from, with its fine-tuned model folder, if any.

    Round 1 of SVD/FWSVD + FT *is* dense fine-tuning under the same settings (and gives the same
    weights, tested), so the grid runs it once per task and seed instead of once per budget and method.
    """
    if cell.method not in TWO_ROUND_METHODS or cell.dense.key not in done:
        return None
    results_path = os.path.join(work_dir, cell.dense.name, "results.json")
    if not os.path.isfile(results_path):
        return None
    with open(results_path, encoding="utf-8") as handle:
        folder = json.load(handle).get("finetuned_dir")
    return {"record": done[cell.dense.key], "folder": folder} if folder and os.path.isdir(folder) else None


def with_first_round(record: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """A second-round record made whole: wall and CPU time of both rounds, the larger peak memory.

    ``second_round`` keeps the second process's own figures; ``process_wall_s`` stays that process's.
    """
    second = {name: record[name] for name in ("command", "pipeline_wall_s", "process_cpu_s", "peak_rss_mib")}
    whole = {**record, "first_round": {"key": dense["key"], "command": dense["command"]}, "second_round": second,
             "pipeline_wall_s": record["pipeline_wall_s"] + dense["pipeline_wall_s"],
             "peak_rss_mib": max(record["peak_rss_mib"], dense["peak_rss_mib"])}
    if "process_cpu_s" in dense:
        whole["process_cpu_s"] += dense["process_cpu_s"]
    else:  # dense runs recorded before CPU time was measured: the sum is unknown
        del whole["process_cpu_s"]
    return whole


def run_grid(args: argparse.Namespace) -> int:
    """Run every cell that ``args.runs`` does not hold yet, ``args.parallel`` at a time; returns the failures.

    A two-round cell waits for its dense cell when that is still to run, so it can start from it.
    """
    if args.no_reuse and args.first_round_lr is not None:
        raise SystemExit("--first-round-lr trains the first round as a dense cell of its own; drop --no-reuse.")
    cells = list(grid(args))
    done = {record["key"]: record for record in read_lines(args.runs)}
    todo = [cell for cell in cells if cell.key not in done]
    print(f"glue grid: {len(cells)} cells, {len(cells) - len(todo)} already in {args.runs}, {len(todo)} to run"
          + (f", {args.parallel} at a time" if args.parallel > 1 else ""))
    failures, started = 0, 0
    running: dict[Future, tuple[Cell, Optional[dict[str, Any]]]] = {}
    with ThreadPoolExecutor(args.parallel) as pool, _stopping_live_runs():
        while todo or running:
            for cell in _ready(todo, running, args.no_reuse)[: args.parallel - len(running)]:
                todo.remove(cell)
                started += 1
                reuse = None if args.no_reuse else first_round(cell, done, args.work_dir)
                if reuse is None and cell.first_round_lr is not None:  # one process cannot train two learning rates
                    failures += 1
                    print(f"{cell.name}: not run: its first round ({cell.dense.name}) is not recorded as finished "
                          f"in {args.runs}, or its finetuned/ folder is gone from {args.work_dir} (both rounds in one "
                          "process would train at one learning rate).", file=sys.stderr, flush=True)
                    continue
                print(f"[{started}/{started + len(todo)}] {cell.name}"
                      + (" (round 1 from the dense run)" if reuse else "") + " ...", flush=True)
                future = pool.submit(run_cell, cell, args.work_dir, args.glue_dir, reuse and reuse["folder"],
                                     args.parallel)
                running[future] = (cell, reuse)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell, reuse = running.pop(future)
                try:
                    record = future.result()
                except RuntimeError as error:
                    failures += 1
                    print(error, file=sys.stderr, flush=True)
                    continue
                if reuse:
                    record = with_first_round(record, reuse["record"])
                append_line(args.runs, record)
                done[cell.key] = record
                metrics = "  ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
                print(f"    {cell.name}: {metrics}  ({record['pipeline_wall_s']:.0f} s, "
                      f"{record['peak_rss_mib']:.0f} MiB)", flush=True)
    return failures


def _ready(todo: Sequence[Cell], running: dict[Future, tuple[Cell, Any]], no_reuse: bool) -> list[Cell]:
    """The cells that may start now, dense ones first: a two-round cell waits while its dense cell is
    still to run or running (a failed dense cell leaves it to run both rounds itself)."""
    pending = {cell.key for cell in todo} | {cell.key for cell, _ in running.values()}
    ready = [cell for cell in todo
             if no_reuse or cell.method not in TWO_ROUND_METHODS or cell.dense.key not in pending]
    return sorted(ready, key=lambda cell: cell.method != "dense")


@contextmanager
def _stopping_live_runs() -> Iterator[None]:
    """Stop the cells' processes with the runner: on SIGTERM (e.g. `timeout`) they would run on orphaned."""

    def stop(signum: int, _frame: Any) -> None:
        _terminate_live_runs()
        raise SystemExit(f"glue grid: stopped by signal {signum}; finished cells are kept in the JSON lines")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        _terminate_live_runs()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate_live_runs() -> None:
    for process in list(LIVE_RUNS):
        process.terminate()


def _device(record: dict[str, Any]) -> str:
    """What a run trained on; runs recorded before the field existed all trained on the CPU."""
    return record.get("device", "cpu")


# The cell's axes in the table: every other key of a cell (but the seed) is a setting of the run.
ROW_AXES = ("task", "method", "budget")
SETTING_NAMES = {"learning_rate": "lr"}  # a setting's column in the table (else its key, spaced)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per distinct cell but its seed: one row per (task, method, budget) and setting.

    No setting (learning rate, epochs, ...) is chosen by its score: that would select on the dev set. Each row's
    ``setting`` names the settings that differ between its task's rows, the table's and the plot's extra columns.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        cell = dict(record["cell"])
        seed_free = tuple(sorted((k, v) for k, v in cell.items() if k != "seed"))
        groups.setdefault(seed_free, []).append(record)
    rows, cells = [], []
    for seed_free, runs in groups.items():
        cell = dict(seed_free)
        cells.append(cell)
        metrics = {name: _mean_std([run["metrics"][name] for run in runs]) for name in runs[0]["metrics"]}
        rows.append({**cell, "seeds": sorted(run["cell"]["seed"] for run in runs), "metrics": metrics,
                     "target_params": runs[0]["target_params"], "model_params": runs[0]["model_params"],
                     "flops_ratio": runs[0]["flops_ratio"],
                     "pipeline_wall_s": _mean_std([run["pipeline_wall_s"] for run in runs]),
                     "process_cpu_s": _mean_std([r["process_cpu_s"] for r in runs if "process_cpu_s" in r]),
                     "threads": sorted({str(run["threads"]) for run in runs}),
                     "parallel": max(run.get("parallel", 1) for run in runs),
                     "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
                     "first_round_reused": any("first_round" in run for run in runs),
                     "collapsed": sum(bool(run.get("collapsed")) for run in runs),
                     "commands": [run["command"] for run in runs]})
    for task in {cell["task"] for cell in cells}:
        varying = varying_settings([cell for cell in cells if cell["task"] == task])
        for row, cell in zip(rows, cells):
            if cell["task"] == task:
                row["setting"] = {key: cell.get(key) for key in varying}
    methods = list(METHOD_FLAGS)
    return sorted(rows, key=lambda r: (r["task"], -(r["budget"] or 2.0), methods.index(r["method"]),
                                       *(_order(value) for value in r["setting"].values())))


def varying_settings(cells: Sequence[dict[str, Any]]) -> list[str]:
    """The settings (cell keys but the seed and the table's axes) with more than one value among ``cells``."""
    order = [f.name for f in fields(Cell)]
    keys = sorted({key for cell in cells for key in cell if key not in ("seed", *ROW_AXES)},
                  key=lambda key: (order.index(key) if key in order else len(order), key))
    return [key for key in keys if len({json.dumps(cell.get(key)) for cell in cells}) > 1]


def _order(value: Any) -> tuple:
    """Sort key for a setting's values: numbers, then text, then unset."""
    if value is None:
        return (2, "")
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _setting_text(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_label(setting: dict[str, Any]) -> str:
    """``epochs 6, lr 5e-05``: the row's settings that differ from its task's other rows."""
    return ", ".join(f"{SETTING_NAMES.get(k, k.replace('_', ' '))} {_setting_text(v)}" for k, v in setting.items())


def where_filter(records: Sequence[dict[str, Any]], conditions: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The records whose cell has every ``key=value`` (the value as JSON, else as text; ``epochs=3`` is 3.0)."""
    def matches(cell: dict[str, Any], key: str, text: str) -> bool:
        try:
            wanted = json.loads(text)
        except ValueError:
            wanted = text
        return cell.get(key) == wanted or str(cell.get(key)) == text

    return [r for r in records if all(matches(r["cell"], key, text) for key, text in conditions)]


def _mean_std(values: Sequence[float]) -> Optional[dict[str, float]]:
    """Mean, std and count; None when no run recorded the value."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _mean_text(value: Optional[dict[str, float]], digits: int) -> str:
    if value is None:
        return "—"  # not recorded
    text = f"{value['mean']:.{digits}f}"
    return text + f" ± {value['std']:.{digits}f}" if value["n"] > 1 else text


def markdown_table(rows: Sequence[dict[str, Any]], task: str) -> str:
    """One task's rows, a column for each setting that differs between them (the learning rate's is always
    there); within each budget and setting the best mean per metric column is bold."""
    rows = [row for row in rows if row["task"] == task]
    metric_names = list(rows[0]["metrics"])
    settings = [key for key in rows[0]["setting"] if key != "learning_rate"]
    header = ["budget", "method", *metric_names, "target params", "model params", "FLOPs vs dense",
              "pipeline wall s", "CPU s", "threads", "peak RSS MiB",
              *(SETTING_NAMES.get(key, key.replace("_", " ")) for key in settings), "lr", "seeds"]
    lines = [f"### {task.upper()}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        peers = [other for other in rows if other["budget"] == row["budget"] and other["setting"] == row["setting"]]
        label = METHOD_LABELS[row["method"]] + (" †" if row.get("first_round_reused") else "")
        if row.get("collapsed"):
            label += f" ⚠ {row['collapsed']} of {len(row['seeds'])} collapsed"
        cells = ["dense" if row["budget"] is None else f"{row['budget']:g}", label]
        for name in metric_names:
            value = row["metrics"][name]
            text = _mean_text(value, 4)
            is_best = len(peers) > 1 and value["mean"] == max(p["metrics"][name]["mean"] for p in peers)
            cells.append(f"**{text}**" if is_best else text)
        target = "all" if row["budget"] is None else f"{row['target_params']:,}"
        shared = " ‡" if row.get("parallel", 1) > 1 else ""
        cells += [target, f"{row['model_params']:,}", f"{row['flops_ratio']:.3f}",
                  _mean_text(row["pipeline_wall_s"], 0) + shared, _mean_text(row["process_cpu_s"], 0) + shared,
                  ", ".join(row["threads"]), f"{row['peak_rss_mib']:.0f}",
                  *(_setting_text(row["setting"][key]) for key in settings), f"{row['learning_rate']:g}",
                  ", ".join(map(str, row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scores(rows: Sequence[dict[str, Any]], path: str) -> list[tuple[str, float, str]]:
    """Score vs budget per task (first metric, mean ± std over seeds); dense as a dashed line; one line per
    method and setting where a task's runs differ in a setting (``summarize``'s ``setting``).

    Returns the labels put on points averaged over fewer seeds than the rest of their task.
    """
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    # One colour per method in every panel, and one legend for all panels: a task where only some
    # methods ran must not give another method's colour to the ones it has.
    colors = {method: f"C{index}" for index, method in enumerate(m for m in METHOD_FLAGS if m != "dense")}
    # One line per method and setting (the settings that differ within a task); a setting keeps its style
    # (marker and line, or the dense line's dash) in every panel.
    styles = list(dict.fromkeys(setting_label(row["setting"]) for row in rows))
    markers, lines, dashes = "osD^vPX*", ["-", ":", "-.", (0, (5, 1))], ["--", ":", "-.", (0, (1, 3))]
    tasks = sorted({row["task"] for row in rows})
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4.2), squeeze=False)
    labels = []
    for axis, task in zip(axes[0], tasks):
        task_rows = [row for row in rows if row["task"] == task]
        metric = next(iter(task_rows[0]["metrics"]))
        for method in METHOD_FLAGS:
            method_rows = [r for r in task_rows if r["method"] == method]
            for setting in dict.fromkeys(setting_label(r["setting"]) for r in method_rows):
                style = styles.index(setting)
                label = METHOD_LABELS[method] + (f" ({setting})" if setting else "")
                points = sorted((r["budget"], r["metrics"][metric]) for r in method_rows
                                if setting_label(r["setting"]) == setting and r["budget"] is not None)
                if method == "dense":
                    dense = next(r for r in method_rows if setting_label(r["setting"]) == setting)
                    axis.axhline(dense["metrics"][metric]["mean"], color="black", linewidth=1, label=label,
                                 linestyle=dashes[style % len(dashes)])
                elif points:
                    axis.errorbar([p[0] for p in points], [p[1]["mean"] for p in points],
                                  yerr=[p[1]["std"] for p in points], marker=markers[style % len(markers)],
                                  linestyle=lines[style % len(lines)], capsize=3, color=colors[method], label=label)
        most_seeds = max(row["metrics"][metric]["n"] for row in task_rows)
        for row in task_rows:  # a mean over fewer seeds than the rest is not comparable at a glance
            n = row["metrics"][metric]["n"]
            if n < most_seeds and row["budget"] is not None:
                labels.append((task, row["budget"], f"{n} seed{'s' * (n > 1)}"))
                axis.annotate(labels[-1][2], (row["budget"], row["metrics"][metric]["mean"]),
                              textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=6, color="dimgray")
        axis.set(title=task.upper(), xlabel="kept fraction of target-matrix parameters", ylabel=metric)
        axis.grid(alpha=0.3)
    # Below the panels: inside one, the legend hid the points at the right-hand budget.
    legend = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.14 if len(tasks) > 1 else 0.2, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return labels


def write_summary(args: argparse.Namespace) -> str:
    """Write ``OUT.md``, ``OUT.json`` and ``OUT.png`` from the JSON lines; returns the Markdown."""
    records = read_lines(args.runs)
    if not records:
        raise SystemExit(f"No finished runs in {args.runs}; run the grid first.")
    unknown = sorted({key for key, _ in args.where} - {key for record in records for key in record["cell"]})
    if unknown:
        raise SystemExit(f"--where names {', '.join(unknown)}, which no run in {args.runs} records.")
    records = where_filter(records, args.where)
    if not records:
        raise SystemExit(f"No run in {args.runs} has {' and '.join(f'{k}={v}' for k, v in args.where)}.")
    devices = sorted({_device(record) for record in records})
    if len(devices) > 1:  # a mean over seeds would mix the hardware's times
        raise SystemExit(f"{args.runs} holds runs trained on {' and '.join(devices)}; keep one JSON lines file "
                         "per kind of hardware (--runs) and summarise each on its own (--out).")
    rows = summarize(records)
    hosts = sorted({f"{r['host']} ({r.get('cpu_model', 'CPU model not recorded')}, {r['cpus']} CPUs, "
                    f"OMP_NUM_THREADS={r['threads']}, trained on {_device(r)})" for r in records})
    commits = sorted({r.get("commit", "unknown") for r in records})
    settings = {k: sorted({str(r["cell"][k]) for r in records}) for k in
                ("model", "epochs", "max_seq_length", "learning_rate", "max_train_samples", "max_steps")}
    # Settings that differ within a task are not shared: each of their values has its own rows.
    varying = {key for row in rows for key in row["setting"]}
    shared = {k: v for k, v in settings.items() if k not in varying}
    differ = {k: sorted({str(r["cell"].get(k)) for r in records}) for k in
              sorted(varying, key=lambda k: list(settings).index(k) if k in settings else len(settings))}
    where = f" with {', '.join(f'{k}={v}' for k, v in args.where)} (`--where`)" if args.where else ""
    listed = "; ".join(f"{k} {', '.join(v)}" for k, v in shared.items())
    if differ:
        listed += ("; settings that differ, each value in its own rows (a column in the tables): "
                   + "; ".join(f"{k} {', '.join(v)}" for k, v in differ.items()))
    text = "\n\n".join([
        "# GLUE dev results: RankDyna vs SVD/FWSVD pipelines",
        f"{len(records)} runs{where} from `{os.path.relpath(args.runs)}`; settings shared by all methods: "
        + listed + f". Hardware: {'; '.join(hosts)}. "
        f"Code: commit {', '.join(commits)} (summarised at {git_commit()}).",
        "Budget = kept fraction of the target matrices' parameters. Mean ± std over seeds; bold = best mean "
        f"within a budget{' and setting' if differ else ''}. Wall time is the whole pipeline (both rounds for "
        "SVD/FWSVD + FT); CPU s is the run's process user+system time (— where not recorded). † = round 1 is "
        "the dense cell's run with the same settings and seed (`--finetuned-model`); its wall and CPU time are "
        "included. ‡ = the runs shared the machine with other cells of the grid (`--parallel`), so their times "
        "are inflated and compare with neither each other nor unshared runs.",
        *(f"**Note:** {note}" for note in args.note),
        *(markdown_table(rows, task) for task in sorted({row["task"] for row in rows})),
        f"Summarised with `python {portable_command(sys.argv)}`. "
        f"Each run's command is in `{os.path.basename(args.out)}.json`.",
    ]) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, "summarize_command": portable_command(sys.argv)}, handle, indent=1)
    plot_scores(rows, args.out + ".png")
    return text


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``run`` and ``summarize``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or continue) the grid")
    run.add_argument("--model", required=True, help="local model folder (e.g. the pip-installed MiniLM-L6)")
    run.add_argument("--tasks", nargs="+", default=["mrpc", "cola", "sst2"])
    run.add_argument("--methods", nargs="+", choices=list(METHOD_FLAGS), default=DEFAULT_METHODS)
    run.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25])
    run.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    run.add_argument("--lrs", nargs="+", type=float, default=[5e-5],
                     help="learning rates (all methods; the summary gives each its own rows, choosing none)")
    run.add_argument("--first-round-lr", type=float, default=None,
                     help="svd/fwsvd: train the first round (dense fine-tuning) at this learning rate and only the "
                     "second at --lrs (issue #21 §4; default: both rounds at --lrs)")
    run.add_argument("--epochs", type=float, default=3.0)
    run.add_argument("--max-seq-length", type=int, default=128)
    run.add_argument("--max-steps", type=int, default=-1, help="cap on optimizer steps per round (smoke runs)")
    run.add_argument("--max-train-samples", nargs="*", type=_task_count, default=[("sst2", 8000)], metavar="TASK=N",
                     help="subsample a task's training set (default sst2=8000)")
    run.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    run.add_argument("--work-dir", default="runs/glue", help="folder for each run's outputs and log")
    run.add_argument("--parallel", type=_at_least_one, default=1,
                     help="cells run at once (for a GPU with room to spare; recorded, since it inflates the times)")
    run.add_argument("--no-reuse", action="store_true",
                     help="run both rounds of SVD/FWSVD + FT even where the dense run's fine-tuned model exists")
    summary = commands.add_parser("summarize", help="write the table and plot from the JSON lines")
    summary.add_argument("--note", action="append", default=[], help="a caveat printed above the tables")
    summary.add_argument("--where", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                         help="only the runs whose cell has this setting (e.g. epochs=3; repeatable); without it "
                              "every setting gets its own rows, none is chosen by its score")
    for sub in (run, summary):
        sub.add_argument("--runs", default=os.path.join(DEFAULT_RESULTS, "glue_runs.jsonl"), help="JSON lines file")
        sub.add_argument("--out", default=os.path.join(DEFAULT_RESULTS, "glue"), help="summary path, no extension")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the grid or write its summary."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        failures = run_grid(args)
        if failures:
            print(f"{failures} cell(s) failed; rerun to retry them.", file=sys.stderr)
        return 1 if failures else 0
    print(write_summary(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
