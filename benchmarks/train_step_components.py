"""Where a RankDyna training step's time goes: forward + backward, RankDyna's per-step update, optimizer.

    python benchmarks/train_step_components.py --model $MODEL --out benchmarks/results/train_step_components

On the CPU (nothing waits for a GPU's queue, so its times would mean nothing there). The model is
``train_step.build``'s (every matrix keeping ``--kept`` of its singular groups, masked
groups out of the products, as training does). Per step, timed apart: forward and backward on one
batch of random token ids (batch × seq, no padding); ``update_and_allocate``, RankDyna's bookkeeping
after each optimizer step (the finiteness check of the gradients and the importance EMAs of every
kept group; the schedule is in its warm-up, so no re-allocation runs, which happens only every
``deltaT`` steps in training); and the AdamW step with ``zero_grad``. Sequence lengths are timed in
interleaved rounds so background load falls on all alike; the table gives, per component, the median
over rounds of each round's mean. The package's commit is recorded, so a run of the code before a
change and one after can be told apart (run them one after the other on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

import peft_rankdyna
from peft_rankdyna.io import portable_command
from train_step import build, machine_environment, page, random_batch, save

COMPONENTS = ("forward + backward", "update_and_allocate", "optimizer step")


def package_commit() -> str:
    """Short commit of the checkout ``peft_rankdyna`` is imported from, "+changes" if its package differs from
    that commit ("unknown" outside git)."""
    folder = os.path.dirname(os.path.abspath(peft_rankdyna.__file__))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=folder)
    if commit.returncode != 0:
        return "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True, cwd=folder)
    return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_components(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                    steps: int, first_step: int) -> dict[str, float]:
    """Mean seconds per step of each component over ``steps`` training steps."""
    totals = dict.fromkeys(COMPONENTS, 0.0)
    for step in range(first_step, first_step + steps):
        totals["forward + backward"] += timed(lambda: model(**batch).loss.backward())
        # The callback calls it after optimizer.step(); its inputs (the gradients) are the same before.
        totals["update_and_allocate"] += timed(lambda: model.base_model.update_and_allocate(step))
        totals["optimizer step"] += timed(lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
    return {name: total / steps for name, total in totals.items()}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-sequence-length component times of every round, rounds interleaved across lengths."""
    generator = torch.Generator().manual_seed(0)
    runs = []
    for seq_len in args.seq_lens:
        model = build(args.model, args.kept).train()
        batch = random_batch(args.model, args.batch_size, seq_len, generator)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        time_components(model, optimizer, batch, args.warmup, 0)
        runs.append({"seq_len": seq_len, "model": model, "optimizer": optimizer, "batch": batch,
                     "rounds": {name: [] for name in COMPONENTS}})
    for round_index in range(args.rounds):
        for run in runs:
            first_step = args.warmup + round_index * args.steps
            for name, seconds in time_components(run["model"], run["optimizer"], run["batch"], args.steps,
                                                 first_step).items():
                run["rounds"][name].append(seconds)
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"seq {r['seq_len']}: " + " / ".join(f"{r['rounds'][n][-1]:.3f}" for n in COMPONENTS) for r in runs),
            flush=True)
    return [{"seq_len": run["seq_len"], "rounds_s": run["rounds"],
             "median_s": {name: statistics.median(values) for name, values in run["rounds"].items()}}
            for run in runs]


def markdown(results: list[dict[str, Any]], command: str, environment: dict[str, Any]) -> str:
    """One row per sequence length: each component's median seconds and share of the step."""
    header = " | ".join(f"{name} s (share)" for name in COMPONENTS)
    lines = [f"| seq len | {header} | step s |", "|---|" + "---|" * (len(COMPONENTS) + 1)]
    for result in results:
        medians = result["median_s"]
        step = sum(medians.values())
        cells = " | ".join(f"{medians[name]:.3f} ({medians[name] / step:.0%})" for name in COMPONENTS)
        lines.append(f"| {result['seq_len']} | {cells} | {step:.3f} |")
    return page("Training-step components: RankDyna", lines, command, environment)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark from a command line (``argv``, default ``sys.argv[1:]``); returns the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local pre-trained encoder folder")
    parser.add_argument("--out", required=True, help="output path without extension (.json and .md)")
    parser.add_argument("--kept", type=float, default=0.5, help="fraction of each matrix's singular groups kept")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[32, 128],
                        help="sequence lengths (CoLA's batches pad to about 32, MRPC's to about 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="steps per length and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    results = measure(args)
    command = "python benchmarks/train_step_components.py " + portable_command(
        sys.argv[1:] if argv is None else argv, {args.model: "$MODEL", args.out: "$OUT"})
    environment = machine_environment() | {"peft_rankdyna_commit": package_commit()}
    settings = vars(args) | {"model": "$MODEL", "out": "$OUT"}  # the command names them the same way
    text = markdown(results, command, environment)
    save(args.out, {"command": command, "environment": environment, "settings": settings, "results": results}, text)
    return text


if __name__ == "__main__":
    main()
