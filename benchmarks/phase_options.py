"""What of the two-round pipeline one round can borrow (issue #21 §5): each option against the default, seed by seed.

    python benchmarks/phase_options.py --runs benchmarks/results/phase_options_runs.jsonl \
        benchmarks/results/glue_runs.jsonl --out benchmarks/results/phase_options

Reads the JSON lines that ``benchmarks/glue.py run`` writes. An option's run (a longer warm-up, a longer
final phase, a learning-rate restart, self-distillation: the ``rankdyna_*`` grid methods) is paired with
the default RankDyna run that shares every other cell field, the seed included, so each difference is
one seed's and the seed-to-seed spread of both methods cancels as far as it can. A row is one option
at one setting: the paired differences, how many seeds it won, both means, and both CPU times where
they are like for like. Runs of an option without a default partner are listed, never dropped quietly; a cell
recorded in two files keeps the first file's run (name the newer file first), and a pair whose runs come from
two commits is marked, since its difference holds the code's changes too.
Writes ``OUT.md``, ``OUT.json`` and ``OUT.png`` (the per-seed differences, a panel per task).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Optional, Sequence

from cost_quality import load_runs, require_one_device, run_name, save_summary, task_metrics, warn
from glue import METHOD_FLAGS, METHOD_LABELS, git_commit, setting_label, varying_settings

from peft_rankdyna.io import portable_command

OPTIONS = ["rankdyna_long_warmup", "rankdyna_long_final", "rankdyna_lr_restart", "rankdyna_self_distill"]
BASELINE = "rankdyna"


def partner_key(cell: dict[str, Any]) -> str:
    """Every cell field but the method: an option's run and its default partner share it."""
    return json.dumps({key: value for key, value in cell.items() if key != "method"}, sort_keys=True)


def like_for_like(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' CPU times compare: both recorded, on the same host with the same thread count, neither
    sharing the machine."""
    return ("process_cpu_s" in a and "process_cpu_s" in b and a.get("threads") == b.get("threads")
            and a.get("host") == b.get("host") and (a.get("parallel") or 1) == 1 and (b.get("parallel") or 1) == 1)


def pair_runs(runs: Sequence[dict[str, Any]], baseline: str,
              warnings: list[str]) -> dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(task, budget, option, setting) → its (option run, default run) pairs, seed by seed."""
    defaults = {partner_key(run["cell"]): run for run in runs if run["cell"]["method"] == baseline}
    pairs: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for run in runs:
        cell = run["cell"]
        if cell["method"] == baseline:
            continue
        partner = defaults.get(partner_key(cell))
        if partner is None:
            warn(f"{run_name(cell)}: no {baseline} run with the same setting and seed; left out.", warnings)
            continue
        setting = json.dumps({k: v for k, v in cell.items() if k not in ("seed", "model", "method")}, sort_keys=True)
        pairs.setdefault((cell["task"], cell.get("budget"), cell["method"], setting), []).append((run, partner))
    return pairs


def summarize_pairs(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], metric: str) -> dict[str, Any]:
    """One option at one setting: paired differences (option − default), wins, means, collapses, CPU times, and
    whether both sides ran the same code."""
    pairs = sorted(pairs, key=lambda pair: pair[0]["cell"]["seed"])
    cell = pairs[0][0]["cell"]
    option = [run["metrics"][metric] for run, _ in pairs]
    default = [partner["metrics"][metric] for _, partner in pairs]
    deltas = [a - b for a, b in zip(option, default)]
    comparable = all(like_for_like(run, partner) for run, partner in pairs)
    return {
        "task": cell["task"], "budget": cell.get("budget"), "method": cell["method"], "metric": metric,
        "setting": {key: value for key, value in cell.items() if key not in ("seed", "model", "method")},
        "seeds": [run["cell"]["seed"] for run, _ in pairs],
        "deltas": [{"seed": run["cell"]["seed"], "option": a, "default": b, "delta": a - b}
                   for (run, _), a, b in zip(pairs, option, default)],
        "option_mean": statistics.fmean(option), "default_mean": statistics.fmean(default),
        "delta_mean": statistics.fmean(deltas), "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else None,
        "wins": sum(delta > 0 for delta in deltas), "losses": sum(delta < 0 for delta in deltas),
        # A collapsed default would make any option look good: both sides are counted.
        "collapsed_option": sum(bool(run.get("collapsed")) for run, _ in pairs),
        "collapsed_default": sum(bool(partner.get("collapsed")) for _, partner in pairs),
        # A difference between runs of two commits holds every change between them too.
        "commits": sorted({f"{run.get('commit') or '?'} / {partner.get('commit') or '?'}" for run, partner in pairs}),
        "same_code": all(run.get("commit") and run.get("commit") == partner.get("commit") for run, partner in pairs),
        # CPU seconds compare only between runs that ran alone with the same threads; otherwise left blank.
        "cpu_ratio": (statistics.fmean(run["process_cpu_s"] for run, _ in pairs)
                      / statistics.fmean(partner["process_cpu_s"] for _, partner in pairs)) if comparable else None,
        "commands": [run["command"] for run, _ in pairs],
    }


def rows_from(runs: Sequence[dict[str, Any]], baseline: str, warnings: list[str]) -> list[dict[str, Any]]:
    """The summary's rows by task, budget (largest first), other settings and the options' order in
    ``METHOD_FLAGS``; each row's ``length`` and ``other_settings`` say which setting it is."""
    metrics = task_metrics(runs, warnings)
    rows = [summarize_pairs(group, metrics[task]) for (task, *_), group in pair_runs(runs, baseline, warnings).items()]
    extra = [key for key in varying_settings([row["setting"] for row in rows]) if key not in ("task", "epochs")]
    for row in rows:
        row["length"] = f"{row['setting']['epochs']:g} ep"
        row["other_settings"] = setting_label({key: row["setting"].get(key) for key in extra})
        if not row["same_code"]:
            warn(f"{row['task']} {row['method']} {row['budget']}: option and default ran at other commits "
                 f"(option / default: {', '.join(row['commits'])}); the difference holds the code's changes too.",
                 warnings)
    methods = list(METHOD_FLAGS)
    return sorted(rows, key=lambda r: (r["task"], -(r["budget"] or 0.0), json.dumps(r["setting"], sort_keys=True),
                                       methods.index(r["method"])))


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table, a row per option and setting."""
    other = any(row["other_settings"] for row in rows)
    header = ["task", "budget", "length", *(["other settings"] if other else []), "option", "seeds",
              "option − default per seed", "mean Δ ± std", "better in", "option mean", "default mean",
              "CPU option / default", "collapsed (option, default)", "same code"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        per_seed = ", ".join(f"{d['seed']}: {d['delta']:+.4f}" for d in row["deltas"])
        spread = "—" if row["delta_std"] is None else f"{row['delta_std']:.4f}"
        ratio = "not like for like" if row["cpu_ratio"] is None else f"{row['cpu_ratio']:.2f}"
        collapsed = f"{row['collapsed_option']}, {row['collapsed_default']}"
        lines.append("| " + " | ".join([
            f"{row['task'].upper()} ({row['metric']})", "dense" if row["budget"] is None else f"{row['budget']:g}",
            row["length"], *([row["other_settings"]] if other else []), METHOD_LABELS[row["method"]],
            str(len(row["seeds"])), per_seed, f"{row['delta_mean']:+.4f} ± {spread}",
            f"{row['wins']} of {len(row['seeds'])}", f"{row['option_mean']:.4f}", f"{row['default_mean']:.4f}",
            ratio, ("⚠ " + collapsed) if row["collapsed_option"] or row["collapsed_default"] else "no",
            "yes" if row["same_code"] else "no: " + ", ".join(row["commits"])]) + " |")
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]], args: argparse.Namespace, command: str, warnings: Sequence[str]) -> str:
    """The summary page: what a row is, the table, the warnings and the command."""
    files = ", ".join(f"`{os.path.relpath(path)}`" for path in args.runs)
    return "\n\n".join([
        "# Phase options against the one-round default, paired by seed (issue #21 §5)",
        f"Runs from {files} (summarised at {git_commit()}). Each option's run is paired with the default "
        f"RankDyna run ({args.baseline}) of the same task, budget, length, learning rate, samples and seed; "
        "Δ = option − default on the task's dev metric (in the task column). \"Better in\" counts the seeds where "
        "Δ > 0. CPU option / default: mean process CPU time ratio, given only where both ran alone on one host with "
        "the same threads. Same code: whether option and default ran at one commit (else option / default commits).",
        *(f"**Note:** {note}" for note in args.note),
        *(["**Warnings:**\n\n" + "\n".join(f"- {warning}" for warning in warnings)] if warnings else []),
        table(rows),
        f"Summarised with `{command}`. Each run's command is in `{os.path.basename(args.out)}.json`.",
    ]) + "\n"


def plot_deltas(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Per-seed differences against the default, a panel per task: a dot per seed, a bar at the mean."""
    from peft_rankdyna.jobs.plots import pyplot

    plt = pyplot()
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        task_rows = [row for row in rows if row["task"] == task]
        labels = []
        for index, row in enumerate(task_rows):
            deltas = [d["delta"] for d in row["deltas"]]
            axis.scatter([index] * len(deltas), deltas, color="C0", s=18, zorder=3)
            axis.hlines(row["delta_mean"], index - 0.3, index + 0.3, color="C3", linewidth=2)
            budget = "dense" if row["budget"] is None else f"{row['budget']:g}"
            labels.append(f"{METHOD_LABELS[row['method']].removeprefix('RankDyna, ')}\n{budget}, {row['length']}"
                          + (f", {row['other_settings']}" if row["other_settings"] else ""))
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(task_rows)), labels, fontsize=7, rotation=20, ha="right")
        axis.set(title=task.upper(), ylabel=f"Δ dev {task_rows[0]['metric']} (option − default)")
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle("Each option against the same-length default: dots = seeds, bar = mean", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_summary(args: argparse.Namespace, command: str) -> str:
    """Write ``OUT.md``, ``OUT.json`` and ``OUT.png``; returns the Markdown."""
    warnings: list[str] = []
    runs = load_runs(args.runs, [args.baseline, *args.options], warnings)
    require_one_device(runs)
    rows = rows_from(runs, args.baseline, warnings)
    if not rows:
        raise SystemExit(f"No run of {', '.join(args.options)} with a {args.baseline} partner in "
                         f"{', '.join(args.runs)}.")
    text = markdown(rows, args, command, warnings)
    save_summary(args.out, text, {"rows": rows, "warnings": warnings, "notes": args.note, "command": command},
                 lambda path: plot_deltas(rows, path))
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="JSON lines files of `glue.py run`")
    parser.add_argument("--out", required=True, help="summary path, no extension (writes .md, .json, .png)")
    parser.add_argument("--options", nargs="+", choices=list(METHOD_FLAGS), default=OPTIONS)
    parser.add_argument("--baseline", choices=list(METHOD_FLAGS), default=BASELINE,
                        help="the method each option is paired with (default: %(default)s)")
    parser.add_argument("--note", action="append", default=[], help="a caveat printed above the table")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the summary and print it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.baseline in args.options:
        raise SystemExit(f"--baseline {args.baseline} is also among --options.")
    command = "python " + portable_command([os.path.abspath(__file__), *argv])
    print(write_summary(args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
