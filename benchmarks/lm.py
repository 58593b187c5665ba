"""Decoder LMs: perplexity against parameter budget for RankDyna and the SVD-family baselines a user would pick.

    python benchmarks/lm.py free --model $GGUF --texts $WIKI/valid.txt --test $WIKI/test.txt --out $RUNS/lm_free.jsonl
    python benchmarks/lm.py run  --model $GGUF --texts $WIKI/valid.txt --test $WIKI/test.txt --steps 200 \
        --out $RUNS/lm_runs.jsonl --work-dir $WORK_DIR
    python benchmarks/lm.py summarize --runs $RUNS/lm_free.jsonl $RUNS/lm_runs.jsonl --out benchmarks/results/lm

``free``: the training-free truncations — plain SVD, ASVD-style scaling, SVD-LLM-style whitening — at
every budget, each calibrated on the first ``--calibration-tokens`` tokens of the training text, and
the dense model, scored by sliding-window perplexity on the first ``--eval-tokens`` tokens of the test
text (window ``--max-seq-length``, stride half a window). ``run``: each of those followed by
fine-tuning of the factors, RankDyna from the pre-trained model, and dense fine-tuning, all for the
same ``--steps`` optimizer steps (one ``rankdyna compress --objective causal-lm`` process each, its CPU
time recorded; a finished run is skipped, so the grid resumes). ``summarize``: ``OUT.{md,json,png}``
(perplexity against budget, one line per method). Budgets are fractions of the target matrices'
parameters; every record also has the whole model's parameter count.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from glue import append_line, read_lines  # the GLUE grid's JSON-lines records, the same way

BUDGETS = (0.8, 0.6, 0.4)
FREE_METHODS = ("svd", "asvd", "svdllm")
RUN_METHODS = ("rankdyna", "rankdyna_whitened", "svd", "asvd", "svdllm")
# `rankdyna compress` flags of each trained method (dense: `--dense`). The "rankdyna" runs of
# benchmarks/results/lm_runs.jsonl ran when the SVD start was the causal-LM default, without the flag.
METHOD_FLAGS = {"rankdyna": ["--method", "rankdyna", "--init-basis", "svd"],
                "rankdyna_whitened": ["--method", "rankdyna", "--init-basis", "whitened"]}
LABELS = {"dense": "dense", "svd": "SVD", "asvd": "ASVD", "svdllm": "SVD-LLM", "rankdyna": "RankDyna, SVD start",
          "rankdyna_whitened": "RankDyna, whitened start (the default)"}


def load(path: str) -> tuple[Any, Any]:
    """The pre-trained causal LM and its tokenizer (a GGUF file de-quantized by transformers)."""
    from transformers import AutoModelForCausalLM

    from peft_rankdyna.loading import load_tokenizer, model_location

    folder, gguf = model_location(path)
    extra = {"gguf_file": gguf} if gguf else {}
    return AutoModelForCausalLM.from_pretrained(folder, **extra).eval(), load_tokenizer(folder, gguf)


def token_ids(tokenizer: Any, path: str, limit: int) -> list[int]:
    """The first ``limit`` tokens of a text file, tokenised as one stream."""
    from peft_rankdyna.jobs.data.text import encode, read_text

    return encode(tokenizer, read_text(path))[:limit]


def recorded_command(args: argparse.Namespace, argv: list[str]) -> str:
    """The command line as recorded, without the machine's paths: the model as ``$MODEL``, the text folder as
    ``$TEXTS``, the runs file's folder as ``$RUNS``, the work folder as ``$WORK_DIR``."""
    from peft_rankdyna.io import portable_command

    folders = {args.model: "$MODEL", os.path.dirname(os.path.abspath(args.texts)): "$TEXTS",
               os.path.dirname(os.path.abspath(args.out)): "$RUNS"}
    if getattr(args, "work_dir", None):
        folders[args.work_dir] = "$WORK_DIR"
    return portable_command(argv, folders)


def free(args: argparse.Namespace) -> None:
    """Training-free truncations and the dense model, one JSON line each (finished ones skipped)."""
    import torch

    from peft_rankdyna.accounting import model_parameters
    from peft_rankdyna.baselines import factor_model, input_statistics, input_transforms
    from peft_rankdyna.jobs.objectives.causal_lm import perplexity
    from peft_rankdyna.targets import default_target_names

    done = {record["name"] for record in read_lines(args.out)}
    model, tokenizer = load(args.model)
    test = token_ids(tokenizer, args.test, args.eval_tokens)
    calibration = token_ids(tokenizer, args.texts, args.calibration_tokens)
    length = args.max_seq_length
    blocks = torch.tensor(calibration[: len(calibration) // length * length]).view(-1, length)
    names = default_target_names(model)
    stats = None
    methods = [m for m in args.methods if m in FREE_METHODS]
    for method, budget in [("dense", None)] * ("dense" in args.methods) + [(m, b) for b in args.budgets for m in methods]:
        name = method if budget is None else f"{method}-{budget:g}"
        if name in done:
            continue
        start = time.process_time()
        if method == "dense":
            scored = model
        else:
            transform = None
            if method != "svd":
                if stats is None:  # one pass over the calibration text serves every method and budget
                    batches = [{"input_ids": blocks[i:i + 8], "attention_mask": torch.ones_like(blocks[i:i + 8])}
                               for i in range(0, blocks.shape[0], 8)]
                    stats = input_statistics(model, {n: model.get_submodule(n) for n in names}, batches)
                transform = input_transforms(stats, method)
            # a copy of the loaded model, not a second load (a GGUF file is de-quantized again on every load)
            scored = factor_model(copy.deepcopy(model), budget, names, input_transform=transform).eval()
        value = perplexity(scored, test, length)
        append_line(args.out, {"name": name, "method": method, "budget": budget, "stage": "training-free",
                               "perplexity": value, "model_params": model_parameters(scored),
                               "eval_tokens": len(test), "calibration_tokens": int(blocks.numel()),
                               "cpu_s": time.process_time() - start,
                               "command": recorded_command(args, ["python", "benchmarks/lm.py", *sys.argv[1:]]),
                               "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        print(f"{name}: perplexity {value:.2f}", flush=True)


def run(args: argparse.Namespace) -> None:
    """RankDyna, the fine-tuned baselines and dense fine-tuning for ``--steps`` steps each, one process each."""
    done = {record["name"] for record in read_lines(args.out)}
    methods = [m for m in args.methods if m in RUN_METHODS]
    cells = [("dense", None)] * ("dense" in args.methods) + [(m, b) for b in args.budgets for m in methods]
    for method, budget in cells:
        name = f"{method}-ft" if budget is None else f"{method}-{budget:g}-ft"
        if name in done:
            continue
        output = os.path.join(args.work_dir, name)
        command = ["rankdyna", "compress", "--model", args.model, "--objective", "causal-lm", "--texts", args.texts,
                   "--validation-texts", args.test, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-seq-length", str(args.max_seq_length), "--lr", f"{args.lr:g}", "--seed", str(args.seed),
                   "--max-eval-samples", str(args.eval_tokens // args.max_seq_length), "--output", output,
                   "--no-progress", "--calibration-samples", str(args.calibration_tokens // args.max_seq_length)]
        command += ["--dense"] if budget is None else [*METHOD_FLAGS.get(method, ["--method", method]),
                                                       "--budget", f"{budget:g}"]
        print(f"{name} ...", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "peft_rankdyna.jobs.cli", *command[1:]])
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"{name} failed; see {output}", file=sys.stderr)
            continue
        with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        append_line(args.out, {"name": name, "method": "dense" if budget is None else method, "budget": budget,
                               "stage": "fine-tuned", "steps": results["train_steps"],
                               "perplexity": results["metrics"]["perplexity"],
                               "collapsed": results["collapse"]["collapsed"],
                               "model_params": results["model_params_after"],
                               "eval_tokens": results["validation_tokens"], "cpu_s": usage.ru_utime + usage.ru_stime,
                               "wall_s": time.perf_counter() - start, "command": recorded_command(args, command),
                               "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def markdown(records: list[dict[str, Any]], command: str) -> str:
    """One row per method and stage, one column per budget: perplexity (and the whole model's parameters)."""
    budgets = sorted({r["budget"] for r in records if r["budget"] is not None}, reverse=True)
    rows = sorted({(r["stage"], r["method"]) for r in records}, key=lambda k: (k[0], list(LABELS).index(k[1])))
    lines = [f"# Decoder LM: perplexity against budget\n\n`{command}`\n",
             "| stage | method | " + " | ".join(f"budget {b:g}" for b in budgets) + " | dense |",
             "|---|---|" + "---|" * (len(budgets) + 1)]
    for stage, method in rows:
        cells = {r["budget"]: r for r in records if (r["stage"], r["method"]) == (stage, method)}
        shown = [f"{cells[b]['perplexity']:.2f} ({cells[b]['model_params'] / 1e6:.1f} M)" if b in cells else "—"
                 for b in [*budgets, None]]
        lines.append(f"| {stage} | {LABELS[method]} | " + " | ".join(shown) + " |")
    evaluated = " or ".join(f"{count:,}" for count in sorted({r["eval_tokens"] for r in records}))
    calibrated = " or ".join(f"{count:,}" for count in sorted({r["calibration_tokens"] for r in records
                                                              if r.get("calibration_tokens")}))
    lines += ["", f"Test perplexity by a sliding window (stride half the window) on the first {evaluated} test "
              "tokens; in brackets the whole model's parameters."
              + (f" Training-free truncations calibrated on {calibrated} training tokens." if calibrated else ""),
              *_fine_tuned_costs(records), "", "Runs:", ""]
    lines += [f"- `{command}`" for command in dict.fromkeys(r["command"] for r in records)]
    return "\n".join(lines) + "\n"


def _fine_tuned_costs(records: list[dict[str, Any]]) -> list[str]:
    """The fine-tuned runs' step counts and CPU seconds (every run the same steps: a mismatch is shown, not hidden)."""
    trained = [r for r in records if r["stage"] == "fine-tuned"]
    if not trained:
        return []
    steps = " or ".join(str(count) for count in sorted({r["steps"] for r in trained}))
    # Dense (budget None) last, as in the perplexity table.
    present = {r["budget"] for r in trained}
    budgets = sorted(present - {None}, reverse=True) + [None] * (None in present)
    lines = ["", f"Fine-tuned: {steps} optimizer steps each (the other settings are in the commands below); "
             "process CPU seconds, one thread:", "",
             "| method | " + " | ".join("dense" if b is None else f"budget {b:g}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for method in dict.fromkeys(r["method"] for r in trained):
        cells = {r["budget"]: r for r in trained if r["method"] == method}
        lines.append(f"| {LABELS[method]} | " + " | ".join(f"{cells[b]['cpu_s']:,.0f}" if b in cells else "—"
                                                          for b in budgets) + " |")
    return lines


def summarize(args: argparse.Namespace) -> None:
    """``OUT.json``, ``OUT.md`` and ``OUT.png`` from the runs files."""
    from peft_rankdyna.io import atomic_write_text
    from peft_rankdyna.jobs.plots import pyplot

    records = [record for path in args.runs for record in read_lines(path)]
    from peft_rankdyna.io import portable_command

    command = portable_command(["python", "benchmarks/lm.py", *sys.argv[1:]])
    atomic_write_text(args.out + ".json", json.dumps({"command": command, "records": records}, indent=1))
    atomic_write_text(args.out + ".md", markdown(records, command))
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (stage, method) in sorted({(r["stage"], r["method"]) for r in records if r["budget"] is not None}):
        points = sorted((r["budget"], r["perplexity"]) for r in records
                        if (r["stage"], r["method"]) == (stage, method) and r["budget"] is not None)
        axes.plot(*zip(*points), marker="o", linestyle="-" if stage == "fine-tuned" else "--",
                  label=f"{LABELS[method]} ({stage})")
    for record in (r for r in records if r["budget"] is None):
        axes.axhline(record["perplexity"], color="grey", linestyle=":" if record["stage"] == "training-free" else "-.",
                     label=f"dense ({record['stage']})")
    axes.set_yscale("log")
    axes.set_xlabel("budget (fraction of the target matrices' parameters)")
    axes.set_ylabel("test perplexity")
    axes.invert_xaxis()
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(args.out + ".png", dpi=120)
    plt.close(figure)
    print(open(args.out + ".md", encoding="utf-8").read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function in (("free", free), ("run", run)):
        sub = commands.add_parser(name)
        sub.add_argument("--model", required=True, help="a causal LM folder or .gguf file")
        sub.add_argument("--texts", required=True, help="training (and calibration) text")
        sub.add_argument("--test", required=True, help="text the perplexity is measured on")
        sub.add_argument("--out", required=True, help="JSON-lines file the records are appended to")
        sub.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
        sub.add_argument("--methods", nargs="+", default=["dense", *RUN_METHODS], choices=["dense", *RUN_METHODS],
                         help="which to run (default all; `free` has no RankDyna)")
        sub.add_argument("--max-seq-length", type=int, default=128)
        sub.add_argument("--eval-tokens", type=int, default=16384, help="test tokens scored (default 16384)")
        sub.add_argument("--calibration-tokens", type=int, default=16384,
                         help="training tokens ASVD/SVD-LLM calibrate on (default 16384 = 128 blocks of 128)")
        sub.set_defaults(run=function)
    grid = commands.choices["run"]
    grid.add_argument("--steps", type=int, default=200)
    grid.add_argument("--batch-size", type=int, default=4)
    grid.add_argument("--lr", type=float, default=5e-5)
    grid.add_argument("--seed", type=int, default=42)
    grid.add_argument("--work-dir", default="runs/lm")
    summary = commands.add_parser("summarize")
    summary.add_argument("--runs", nargs="+", required=True)
    summary.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "lm"))
    summary.set_defaults(run=summarize)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
