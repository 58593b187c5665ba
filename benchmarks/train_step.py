"""Training-step time of a RankDyna model by kept rank, against dense fine-tuning of the same model.

    python benchmarks/train_step.py --model $MODEL --out benchmarks/results/train_step_cpu

A step is forward, backward and an AdamW update on one batch of random token ids (batch × seq, no
padding), the work of one optimizer step in ``rankdyna compress``. Variants: the dense classifier;
RankDyna with every matrix keeping a fraction of its singular groups (masked groups are left out
of the products, as training does); and the same masks applied the way earlier code did,
by multiplying the masked singular values by zero (``masked product``), to show what leaving them
out saves. All variants live in one process and are timed in each of ``--rounds`` interleaved
rounds, so background load falls on all alike; the table gives the median over rounds of each
round's mean step time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification

from peft_rankdyna import RankDynaConfig, RankDynaLayer
from peft_rankdyna.io import portable_command


def build(model_path: str, kept: float | None, masked_product: bool = False) -> torch.nn.Module:
    """The dense classifier (``kept=None``), or RankDyna with each matrix keeping ``kept`` of its groups."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if kept is None:
        return model
    model = get_peft_model(model, RankDynaConfig(task_type="SEQ_CLS", target_budget=0.5, total_step=10**6))
    for layer in model.base_model.rankdyna_layers().values():
        layer.set_mask(torch.arange(layer.initial_rank) < max(1, round(kept * layer.initial_rank)))
        if masked_product:  # every group stays in the products, the masked ones times zero
            layer._forward_factors = functools.partial(masked_product_factors, layer)
    return model


def masked_product_factors(layer: RankDynaLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The earlier forward's factors: all held groups, the masked singular values multiplied by zero."""
    U, s, Vt = layer.factor_parameters()
    scale = layer.rankdyna_step_scale["default"].to(s.dtype) ** 2  # the stored factors are U/c and Vᵀ/c
    return U, s * scale * layer.mask.to(s.dtype), Vt


def random_batch(model_path: str, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A labelled batch of random token ids, unpadded, drawn from ``generator``."""
    vocab = AutoConfig.from_pretrained(model_path).vocab_size  # ids from the middle of the vocabulary, as text has
    return {"input_ids": torch.randint(min(1000, vocab // 2), min(20000, vocab), (batch_size, seq_len),
                                       generator=generator),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator)}


def time_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               steps: int) -> float:
    """Mean seconds per training step over ``steps`` steps (the device's queue drained before and after)."""
    synchronize = torch.cuda.synchronize if batch["input_ids"].is_cuda else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return (time.perf_counter() - start) / steps


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-variant step times of every round, rounds interleaved across variants."""
    variants = [("dense", None, False)]
    for kept in args.kept:
        variants += [(f"RankDyna, kept {kept:g}", kept, False), (f"RankDyna, kept {kept:g}, masked product", kept, True)]
    batch = random_batch(args.model, args.batch_size, args.seq_len, torch.Generator().manual_seed(0))
    batch = {name: value.to(args.device) for name, value in batch.items()}
    runs = []
    for name, kept, masked_product in variants:
        model = build(args.model, kept, masked_product).to(args.device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        time_steps(model, optimizer, batch, args.warmup)
        runs.append({"variant": name, "kept": kept, "masked_product": masked_product, "model": model,
                     "optimizer": optimizer, "round_means_s": []})
    for round_index in range(args.rounds):
        for run in runs:
            run["round_means_s"].append(time_steps(run["model"], run["optimizer"], batch, args.steps))
        print(f"round {round_index + 1}/{args.rounds}: "
              + ", ".join(f"{r['variant']} {r['round_means_s'][-1]:.3f} s" for r in runs), flush=True)
    return [{k: v for k, v in run.items() if k not in ("model", "optimizer")}
            | {"median_step_s": statistics.median(run["round_means_s"])} for run in runs]


def markdown(results: list[dict[str, Any]], command: str, environment: dict[str, Any]) -> str:
    """The table: median step time and its ratio to dense fine-tuning."""
    dense = results[0]["median_step_s"]
    lines = ["| variant | median s/step | vs dense |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_step_s']:.3f} | {r['median_step_s'] / dense:.2f} |" for r in results]
    return page("Training-step time: RankDyna by kept rank vs dense", lines, command, environment)


def page(title: str, lines: list[str], command: str, environment: dict[str, Any]) -> str:
    """A result page: the title, the table's lines, the command and the environment."""
    return "\n".join([f"# {title}", "", *lines, "", f"Command: `{command}`", "",
                      f"Environment: {json.dumps(environment)}", ""])


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark from a command line (``argv``, default ``sys.argv[1:]``); returns the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local pre-trained encoder folder")
    parser.add_argument("--out", required=True, help="output path without extension (.json and .md)")
    parser.add_argument("--kept", nargs="+", type=float, default=[1.0, 0.75, 0.5, 0.25],
                        help="fractions of each matrix's singular groups kept")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    results = measure(args)
    command = "python benchmarks/train_step.py " + portable_command(sys.argv[1:] if argv is None else argv,
                                                                    {args.model: "$MODEL", args.out: "$OUT"})
    environment = machine_environment() | {"device": args.device}
    if args.device == "cuda":
        environment["gpu"] = torch.cuda.get_device_name(0)
    text = markdown(results, command, environment)
    save(args.out, {"command": command, "environment": environment, "settings": vars(args), "results": results}, text)
    return text


def machine_environment() -> dict[str, Any]:
    """What the timings depend on: machine, CPU count, torch, its threads, Python."""
    return {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": sys.version.split()[0]}


def save(out: str, record: dict[str, Any], text: str) -> None:
    """Write ``OUT.json`` (``record``) and ``OUT.md`` (``text``), and print the table."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    with open(out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
