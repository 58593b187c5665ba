"""Quality per training cost: dev metric against whole-pipeline CPU time, one row per setting (issue #21).

    python benchmarks/cost_quality.py --runs benchmarks/results/cost_quality_alone_runs.jsonl \
        benchmarks/results/glue_runs.jsonl benchmarks/results/glue_runs_6ep.jsonl \
        benchmarks/results/cost_quality_runs.jsonl --out benchmarks/results/cost_quality

(``cost_quality_alone_runs.jsonl``, runs alone on the machine at a later commit, comes first: a cell recorded
in two files keeps its first record, and the summary lists each record it left out.)

Reads the JSON lines that ``benchmarks/glue.py run`` writes and puts one RankDyna round next to the
two-round pipelines (dense fine-tuning, then SVD/FWSVD + FT) at the training cost each one paid: the
process CPU time of the whole pipeline, both rounds for the two-round methods. A setting is every cell
field but the seed (task, method, budget, epochs, learning rate, ...): the runs of one setting are its
seeds, and runs of two settings are never merged, nor is a setting picked by its dev score. Writes
``OUT.md`` (one table per task), ``OUT.json`` (the same rows and the command) and ``OUT.png`` (metric
against CPU time, one line per method and budget through its settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from typing import Any, Callable, Optional, Sequence

from glue import (  # the GLUE grid's records, read and labelled the same way
    METHOD_FLAGS,
    METHOD_LABELS,
    TWO_ROUND_METHODS,
    _device,
    _order,
    git_commit,
    read_lines,
    setting_label,
    varying_settings,
)

from peft_rankdyna.io import portable_command
from peft_rankdyna.jobs.length import default_epochs
from peft_rankdyna.jobs.settings import CompressSettings

# The metric each task is judged on (the first one the paper reports); a task not named here falls back
# to its records' first metric, and the summary says so.
MAIN_METRIC = {"mrpc": "accuracy", "cola": "matthews_correlation", "sst2": "accuracy"}
# The `_old` ablations ran with other optimizer defaults: left out unless named.
DEFAULT_METHODS = ["dense", "fwsvd", "svd", "rankdyna"]
# Cell fields that do not make a setting: the seed varies within one, and the model is always "$MODEL".
NOT_SETTING = ("seed", "model")
# What `rankdyna compress` trains with unless told otherwise (the length: peft_rankdyna.jobs.length).
DEFAULT_SETTINGS = {f.name: f.default for f in dataclasses.fields(CompressSettings)
                    if f.name in ("learning_rate", "max_seq_length", "max_steps")}
# The pipeline RankDyna's default has to match (issue #21): FWSVD + FT, 3 + 3 epochs.
REFERENCE_METHOD, REFERENCE_EPOCHS = "fwsvd", 3.0


def warn(message: str, warnings: list[str]) -> None:
    """Print a warning now and keep it for the summary: nothing is left out silently."""
    print(f"warning: {message}", file=sys.stderr)
    warnings.append(message)


def run_name(cell: dict[str, Any]) -> str:
    """``mrpc rankdyna 0.5 3 ep seed 42``: a run as a reader finds it in the tables."""
    budget = "dense" if cell.get("budget") is None else f"{cell['budget']:g}"
    return f"{cell['task']} {cell['method']} {budget} {cell['epochs']:g} ep seed {cell['seed']}"


def load_runs(paths: Sequence[str], methods: Sequence[str], warnings: list[str]) -> list[dict[str, Any]]:
    """The runs of ``methods`` in ``paths``, each tagged with its file; a cell recorded twice keeps its first record.

    The key (every cell field, seed included) names a cell; a second record of it is a rerun or a copy, and
    averaging both would count one seed twice.
    """
    kept: dict[str, dict[str, Any]] = {}
    left_out: dict[str, int] = {}
    for path in paths:
        if not os.path.isfile(path):  # read_lines takes a missing file for an empty grid; here it is a typo
            raise SystemExit(f"No runs file at {path}.")
        for record in read_lines(path):
            cell = record["cell"]
            if cell["method"] not in methods:
                left_out[cell["method"]] = left_out.get(cell["method"], 0) + 1
                continue
            key = record.get("key") or json.dumps(cell, sort_keys=True)
            if key in kept:
                first = kept[key]
                warn(f"{run_name(cell)} is recorded in both {first['file']} and {path}; kept the first "
                     f"(metrics {first['metrics']}), left out the other (metrics {record['metrics']}).", warnings)
                continue
            kept[key] = {**record, "file": path}
    if left_out:
        print("left out (name them with --methods): "
              + ", ".join(f"{count} {method} runs" for method, count in sorted(left_out.items())), file=sys.stderr)
    return list(kept.values())


def task_metrics(runs: Sequence[dict[str, Any]], warnings: list[str]) -> dict[str, str]:
    """The metric each task's rows report: ``MAIN_METRIC``'s, else the first one its records have."""
    chosen: dict[str, str] = {}
    for run in runs:
        task = run["cell"]["task"]
        if task not in chosen:
            chosen[task] = MAIN_METRIC.get(task) or next(iter(run["metrics"]))
            if task not in MAIN_METRIC:
                warn(f"{task}: no main metric set in MAIN_METRIC; using its records' first, {chosen[task]}.", warnings)
        if chosen[task] not in run["metrics"]:
            raise SystemExit(f"{run_name(run['cell'])} ({run['file']}) has no {chosen[task]} among its metrics "
                             f"{sorted(run['metrics'])}.")
    return chosen


def length_label(method: str, epochs: float) -> str:
    """How long a setting trains: ``3 ep`` for one round, ``3 + 3 ep`` for dense fine-tuning then the factors'."""
    return f"{epochs:g} + {epochs:g} ep" if method in TWO_ROUND_METHODS else f"{epochs:g} ep"


def summarize_group(runs: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One setting's row: the metric over its seeds, its mean CPU and wall time, and whether a run collapsed."""
    runs = sorted(runs, key=lambda run: run["cell"]["seed"])
    cell = runs[0]["cell"]
    values = [run["metrics"][metric] for run in runs]
    # A mean over the seeds that recorded CPU time would not be the cost of the seeds the metric averages.
    cpu = [run["process_cpu_s"] for run in runs if "process_cpu_s" in run]
    return {
        "task": cell["task"], "method": cell["method"], "budget": cell.get("budget"),
        "setting": {key: value for key, value in cell.items() if key not in NOT_SETTING},
        "length": length_label(cell["method"], cell["epochs"]), "metric": metric,
        "seeds": [run["cell"]["seed"] for run in runs],
        "values": [{"seed": run["cell"]["seed"], "value": value, "cpu_s": run.get("process_cpu_s"),
                    "parallel": run.get("parallel"), "threads": run.get("threads")} for run, value in zip(runs, values)],
        "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
        "cpu_s": statistics.fmean(cpu) if len(cpu) == len(runs) else None, "cpu_recorded": len(cpu),
        # pipeline_wall_s covers both rounds of a two-round run; process_wall_s is the second process's alone.
        "wall_s": statistics.fmean(run["pipeline_wall_s"] for run in runs),
        "collapsed": sum(bool(run.get("collapsed")) for run in runs),
        "collapse_unrecorded": sum("collapsed" not in run for run in runs),
        "first_round_reused": any("first_round" in run for run in runs),
        "parallel": max(run.get("parallel") or 1 for run in runs),
        "threads": sorted({"unset" if run.get("threads") is None else str(run["threads"]) for run in runs}),
        "files": sorted({run["file"] for run in runs}), "commands": [run["command"] for run in runs],
    }


def setting_key(fields: dict[str, Any], leave_out: Sequence[str]) -> tuple:
    """``fields`` without ``leave_out``, as a hashable, order-free key."""
    return tuple(sorted((key, value) for key, value in fields.items() if key not in leave_out))


def group_runs(runs: Sequence[dict[str, Any]], warnings: list[str]) -> list[dict[str, Any]]:
    """One row per setting, ordered by task, dense first, budget (largest first), method and setting."""
    metrics = task_metrics(runs, warnings)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(setting_key(run["cell"], NOT_SETTING), []).append(run)
    rows = [summarize_group(group, metrics[group[0]["cell"]["task"]]) for group in groups.values()]
    for task in sorted({row["task"] for row in rows}):  # sorted: the warnings come in one order every time
        # Settings beyond the length that differ within a task (learning rate, samples, ...) get a column.
        task_rows = [row for row in rows if row["task"] == task]
        extra = [key for key in varying_settings([row["setting"] for row in task_rows]) if key != "epochs"]
        for row in task_rows:
            row["other_settings"] = setting_label({key: row["setting"].get(key) for key in extra})
        threads = sorted({value for row in task_rows for value in row["threads"]})
        if len(threads) > 1:  # CPU seconds of several threads include their waiting on each other
            warn(f"{task}: runs with different OMP_NUM_THREADS ({', '.join(threads)}); their CPU times are not "
                 "like for like (the threads column says which is which).", warnings)
    for row in rows:
        if row["cpu_s"] is None:
            warn(f"{row['task']} {row['method']} {'dense' if row['budget'] is None else row['budget']} "
                 f"{row['length']}: CPU time unknown ({row['cpu_recorded']} of {len(row['seeds'])} runs recorded "
                 "process_cpu_s); left out of the plot.", warnings)
    methods = list(METHOD_FLAGS)
    return sorted(rows, key=lambda r: (r["task"], r["budget"] is not None, -(r["budget"] or 0.0),
                                       methods.index(r["method"]),
                                       *(_order(r["setting"].get(k)) for k in sorted(r["setting"]))))


def _number(value: Optional[float], digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table_row(row: dict[str, Any]) -> str:
    """One setting as a Markdown table line."""
    metric = _number(row["mean"], 4) + " ± " + _number(row["std"], 4)
    per_seed = ", ".join(f"{v['seed']}: {v['value']:.4f}" for v in row["values"])
    cpu = (f"unknown ({row['cpu_recorded']} of {len(row['seeds'])} recorded)" if row["cpu_s"] is None
           else f"{row['cpu_s']:.0f}")
    shared = " ‡" if row["parallel"] > 1 else ""
    collapsed = f"⚠ {row['collapsed']} of {len(row['seeds'])}" if row["collapsed"] else "no"
    if row["collapse_unrecorded"]:
        collapsed += f" ({row['collapse_unrecorded']} not recorded)"
    method = METHOD_LABELS[row["method"]] + (" †" if row["first_round_reused"] else "")
    cells = ["dense" if row["budget"] is None else f"{row['budget']:g}", method, row["length"],
             *([row["other_settings"]] if row["other_settings"] else []), str(len(row["seeds"])), metric, per_seed,
             cpu + shared, f"{row['wall_s']:.0f}{shared}", collapsed, ", ".join(row["threads"])]
    return "| " + " | ".join(cells) + " |"


def task_table(rows: Sequence[dict[str, Any]], task: str) -> str:
    """One task's settings, dense first, then by budget and method."""
    rows = [row for row in rows if row["task"] == task]
    metric = rows[0]["metric"]
    other = any(row["other_settings"] for row in rows)  # the same for every row of a task
    header = ["budget", "method", "length", *(["other settings"] if other else []), "seeds",
              f"{metric} mean ± std", f"{metric} per seed", "CPU s (mean)", "wall s (mean)", "collapsed", "threads"]
    lines = [f"### {task.upper()} ({metric})", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + [table_row(row) for row in rows])


def markdown(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], args: argparse.Namespace,
             command: str, warnings: Sequence[str], comparisons: Sequence[dict[str, Any]] = (),
             default: Sequence[dict[str, Any]] = ()) -> str:
    """The summary page: what a row is, the tables, the notes and warnings, and the command that wrote it."""
    files = ", ".join(f"`{os.path.relpath(path)}`" for path in args.runs)
    commits = sorted({str(run.get("commit") or "not recorded") for run in runs})
    metrics = "; ".join(f"{task.upper()} {row_metric}" for task, row_metric in
                        dict.fromkeys((row["task"], row["metric"]) for row in rows))
    return "\n\n".join([
        "# Quality against training cost: one RankDyna round vs the two-round pipelines",
        f"{len(runs)} runs ({', '.join(args.methods)}) from {files}, trained on "
        f"{', '.join(sorted({_device(run) for run in runs}))}; code at commits {', '.join(commits)} "
        f"(summarised at {git_commit()}).",
        "**Every row is one setting**: the runs that share every cell field but the seed (task, method, budget, "
        "epochs, learning rate, training samples, sequence length, step cap). Settings are never merged, and none "
        "is selected on the dev set: every setting that was run has its row.",
        f"Dev metric: {metrics}; mean ± sample std over seeds (— for one seed). Length: `N ep` is one round of N "
        "epochs (RankDyna, dense fine-tuning); `N + N ep` is dense fine-tuning for N epochs, then N epochs of "
        "fine-tuning the factors (SVD/FWSVD + FT). CPU s: the whole pipeline's process user+system time, both "
        "rounds for the two-round methods (†: round 1 is the dense run of the same setting and seed, its time "
        "added), mean over seeds; unknown where a run did not record it (such rows are not plotted). Wall s: "
        "the pipeline's wall time, both rounds, mean over seeds; ‡ = shared the machine with other runs "
        "(`--parallel`, or other jobs): with more processes than cores the CPU time is inflated too, so ‡ CPU "
        "seconds are not like for like with the others. threads: the runs' OMP_NUM_THREADS.",
        *(f"**Note:** {note}" for note in args.note),
        *(["**Warnings:**\n\n" + "\n".join(f"- {warning}" for warning in warnings)] if warnings else []),
        *(task_table(rows, task) for task in dict.fromkeys(row["task"] for row in rows)),
        *([comparison_table(comparisons)] if comparisons else []),
        *([] if not comparisons else [default_table(default)] if default else
          ["No RankDyna setting here trains at its default length."]),
        f"Summarised with `{command}`. Each run's command is in `{os.path.basename(args.out)}.json`.",
    ]) + "\n"


def paired_comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each RankDyna setting against the reference pipeline (FWSVD + FT, 3 + 3 epochs) of the same task,
    budget and other settings, seed by seed: the seeds both ran, the difference in each, and the ratio of
    their mean CPU times over those seeds (None where a seed did not record it)."""
    # RankDyna's one learning rate pairs with the reference's second round (its first may have another).
    unpaired = ("method", "epochs", "first_round_lr")
    references: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row["method"] == REFERENCE_METHOD and row["setting"]["epochs"] == REFERENCE_EPOCHS:
            key = setting_key(row["setting"], unpaired)
            if key in references:
                raise SystemExit(f"Two {REFERENCE_METHOD} settings differ only in their first round's learning rate "
                                 f"({references[key]['setting']} and {row['setting']}); summarise them apart.")
            references[key] = row
    found = []
    for row in rows:
        reference = references.get(setting_key(row["setting"], unpaired))
        if row["method"] != "rankdyna" or reference is None:
            continue
        ours, theirs = ({v["seed"]: v for v in r["values"]} for r in (row, reference))
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        deltas = [ours[seed]["value"] - theirs[seed]["value"] for seed in seeds]
        cpu = [(ours[seed]["cpu_s"], theirs[seed]["cpu_s"]) for seed in seeds]
        known = all(a is not None and b is not None for a, b in cpu)
        paired = [side[seed] for seed in seeds for side in (ours, theirs)]
        found.append({
            "task": row["task"], "budget": row["budget"], "length": row["length"], "setting": row["setting"],
            "reference": reference_label(reference), "metric": row["metric"],
            "seeds": seeds, "deltas": deltas, "mean_delta": statistics.fmean(deltas),
            "ahead": sum(delta > 0 for delta in deltas), "level": sum(delta == 0 for delta in deltas),
            "cpu_ratio": (statistics.fmean(a for a, _ in cpu) / statistics.fmean(b for _, b in cpu)) if known else None,
            # Judged on the paired seeds' own runs: True, False, or None where a run did not record it.
            "shared": (True if any((v["parallel"] or 1) > 1 for v in paired)
                       else None if any(v["parallel"] is None for v in paired) else False),
            "threads_differ": any(ours[seed]["threads"] != theirs[seed]["threads"] for seed in seeds),
        })
    return found


def reference_label(reference: dict[str, Any]) -> str:
    """``FWSVD + FT 3 + 3 ep``, and the first round's learning rate where it differs from the second's."""
    first = reference["setting"].get("first_round_lr")
    return (f"{METHOD_LABELS[REFERENCE_METHOD]} {reference['length']}"
            + ("" if first is None else f", first round at lr {first:g}"))


def comparisons_markdown(comparisons: Sequence[dict[str, Any]]) -> str:
    """Paired comparisons as the rows of one Markdown table, its header included."""
    rows = [f"| {c['task']} | {c['budget']:g} | {c['length']} | {', '.join(map(str, c['seeds']))} | "
            + ", ".join(f"{d:+.4f}" for d in c["deltas"]) + f" | {c['mean_delta']:+.4f} | {c['ahead']} of "
            f"{len(c['seeds'])}" + (f" ({c['level']})" if c["level"] else "") + f" | {ratio_text(c)} |"
            for c in comparisons]
    return "\n".join(["| task | budget | RankDyna | seeds | Δ per seed | mean Δ | ahead (level) | CPU ratio |",
                      "|---|---|---|---|---|---|---|---|", *rows])


def comparison_table(comparisons: Sequence[dict[str, Any]]) -> str:
    """The paired comparisons (at least one) as one Markdown table."""
    reference = comparisons[0]["reference"]
    return "\n\n".join([
        f"### RankDyna against {reference}, seed by seed",
        f"Each RankDyna setting against {reference} of the same task, budget and other settings, over the "
        "seeds both ran: the difference in the dev metric (RankDyna minus the reference) in each seed, its "
        "mean, in how many seeds RankDyna is ahead (= level), and RankDyna's mean CPU time over those seeds "
        "as a fraction of the reference's (‡: a paired run shared the machine; ?: a paired run did not record "
        "whether it did; ≠: a seed's two runs ran with different OMP_NUM_THREADS; in each case the ratio is not "
        "like for like).",
        comparisons_markdown(comparisons),
    ])


def at_default_length(comparisons: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons of RankDyna as `rankdyna compress` trains it by default on GLUE: one round of its default
    length (:mod:`peft_rankdyna.jobs.length`) at the job's default learning rate and sequence length, no step cap."""
    return [c for c in comparisons if c["setting"]["epochs"] == default_epochs(replaces_two_rounds=True)
            and all(c["setting"][key] == value for key, value in DEFAULT_SETTINGS.items())]


def ratio_text(comparison: dict[str, Any]) -> str:
    """A comparison's CPU-time ratio with its marks: ‡ a paired run shared the machine, ? not recorded whether
    it did, ≠ a seed's two runs had different thread counts."""
    if comparison["cpu_ratio"] is None:
        return "unknown"
    shared = {True: " ‡", None: " ?", False: ""}[comparison["shared"]]
    return f"{comparison['cpu_ratio']:.2f}×{shared}" + " ≠" * comparison["threads_differ"]


def expectations(chosen: Sequence[dict[str, Any]]) -> list[str]:
    """Issue #21's expectations of the default, each checked on ``chosen`` (the default-length comparisons)."""
    behind = [f"{c['task']} {c['budget']:g} ({c['mean_delta']:+.4f})" for c in chosen if c["mean_delta"] < 0]
    ahead = sorted(c["task"] for c in chosen if c["budget"] == 0.25 and c["mean_delta"] >= 0.01)
    costly = [f"{c['task']} {c['budget']:g} ({ratio_text(c)})" for c in chosen
              if c["cpu_ratio"] is None or c["cpu_ratio"] > 0.8]
    return [
        "mean at least the reference's on every task and budget: "
        + ("yes" if not behind else "no, behind on " + ", ".join(behind)),
        f"ahead by at least 1 point at budget 0.25 on at least two tasks: {'yes' if len(ahead) >= 2 else 'no'} "
        f"({', '.join(ahead) or 'none'})",
        "at most 0.8× the reference's CPU time: " + ("yes" if not costly else "no: " + ", ".join(costly)),
    ]


def default_table(chosen: Sequence[dict[str, Any]]) -> str:
    """RankDyna at its default length against the reference, one row per task and budget, and the expectations."""
    return "\n\n".join([
        f"### RankDyna at its default length against {chosen[0]['reference']}",
        "The rows of the table above where RankDyna trains as `rankdyna compress` does by default "
        f"(`peft_rankdyna/jobs/length.py`: {default_epochs(replaces_two_rounds=True)} epochs, learning rate, sequence "
        "length and step cap at their defaults; the training set as the grid ran it, SST-2's first 8,000 examples "
        "where it says so), with issue #21's expectations of the default checked on them.",
        comparisons_markdown(chosen),
        "\n".join(f"- {line}" for line in expectations(chosen)),
    ])


def plot_cost_quality(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Dev metric against whole-pipeline CPU time, a panel per task; a line per method and budget through its
    settings in increasing CPU time, each point labelled with its length; rows of unknown CPU time are left out."""
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    colors = {method: f"C{index}" for index, method in enumerate(m for m in METHOD_FLAGS if m != "dense")}
    # A budget keeps its marker and line style in every panel, as a method keeps its colour.
    budgets = sorted({row["budget"] for row in rows if row["budget"] is not None}, reverse=True)
    markers, lines = "osD^vP", ["-", "-.", ":", (0, (5, 1))]
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 4.4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        known = [row for row in rows if row["task"] == task and row["cpu_s"] is not None]
        most_seeds = max(len(row["seeds"]) for row in rows if row["task"] == task)
        for method, budget in dict.fromkeys((row["method"], row["budget"]) for row in known):
            points = sorted((row for row in known if (row["method"], row["budget"]) == (method, budget)),
                            key=lambda row: row["cpu_s"])
            if budget is None:  # budget-less reference (dense fine-tuning): black and dashed
                style = dict(color="black", marker="x", linestyle="--", label=METHOD_LABELS[method])
            else:
                index = budgets.index(budget)
                style = dict(color=colors[method], marker=markers[index % len(markers)],
                             linestyle=lines[index % len(lines)], label=f"{METHOD_LABELS[method]}, budget {budget:g}")
            axis.errorbar([row["cpu_s"] for row in points], [row["mean"] for row in points],
                          yerr=[row["std"] or 0.0 for row in points], capsize=3, **style)
            for row in points:  # which setting a point is: its length (and any other setting that differs)
                text = row["length"] + (f", {row['other_settings']}" if row["other_settings"] else "")
                n = len(row["seeds"])
                text += f", {n} seed{'s' * (n > 1)}" if n < most_seeds else ""  # a less certain mean, at a glance
                axis.annotate(text, (row["cpu_s"], row["mean"]), textcoords="offset points", xytext=(4, 4),
                              fontsize=6, color="dimgray")
        if not known:
            axis.text(0.5, 0.5, "no run with recorded CPU time", ha="center", transform=axis.transAxes)
        axis.set(title=task.upper(), xlabel="whole-pipeline process CPU time (s)",
                 ylabel=f"dev {next(row['metric'] for row in rows if row['task'] == task)}")
        axis.grid(alpha=0.3)
        axis.margins(x=0.15)  # room for the labels of the rightmost points
    legend: dict[str, Any] = {}
    for axis in axes[0]:  # one legend for every panel, below them, so it hides no point
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle("Dev metric against training cost (mean ± std over seeds; a point per setting)", fontsize=10)
    figure.tight_layout(rect=(0, 0.16 if len(tasks) > 1 else 0.22, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def require_one_device(runs: Sequence[dict[str, Any]]) -> None:
    """Stop unless every run trained on one kind of hardware: CPU time is a cost, and a dev score comparable,
    only on one."""
    devices = sorted({_device(run) for run in runs})
    if len(devices) > 1:
        raise SystemExit(f"The runs trained on {' and '.join(devices)}; summarise each kind of hardware on its own.")


def save_summary(out: str, text: str, payload: dict[str, Any], plot: Callable[[str], None]) -> None:
    """``OUT.md`` (``text``), ``OUT.json`` (``payload``) and ``OUT.png`` (drawn by ``plot``)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(out + ".json", "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
    plot(out + ".png")


def write_summary(args: argparse.Namespace, command: str) -> str:
    """Write ``OUT.md``, ``OUT.json`` and ``OUT.png`` from the runs files; returns the Markdown."""
    warnings: list[str] = []
    runs = load_runs(args.runs, args.methods, warnings)
    if not runs:
        raise SystemExit(f"No run of {', '.join(args.methods)} in {', '.join(args.runs)}.")
    require_one_device(runs)
    rows = group_runs(runs, warnings)
    comparisons = paired_comparisons(rows)
    default = at_default_length(comparisons)
    text = markdown(rows, runs, args, command, warnings, comparisons, default)
    save_summary(args.out, text, {"rows": rows, "comparisons": comparisons, "default_length": default,
                                  "warnings": warnings, "notes": args.note, "command": command},
                 lambda path: plot_cost_quality(rows, path))
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="JSON lines files of `glue.py run` (a cell in two files: the first file's run is kept)")
    parser.add_argument("--out", required=True, help="summary path, no extension (writes .md, .json, .png)")
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_FLAGS), default=DEFAULT_METHODS)
    parser.add_argument("--note", action="append", default=[], help="a caveat printed above the tables")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the summary and print it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "python " + portable_command([os.path.abspath(__file__), *argv])
    print(write_summary(args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
