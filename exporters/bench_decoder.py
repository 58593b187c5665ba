"""Decoder latency: prefill and per-token decoding of causal-LM graphs with their KV cache, against the dense model.

For every batch size and length ``s`` it times two runs of each graph: the *prefill* of ``s`` prompt
tokens with an empty cache, and one *decoding step* (one new token per row) fed the ``s``-token cache
that prefill wrote — the time per generated token once a prompt is in the cache. The dense reference
is Optimum's export of the dense model and its 8-bit-weight form (the same quantization as the
compact int8 graphs), exported once into the work folder. Workers, rounds and medians are those of
:mod:`.bench` (a fresh process per graph, shuffled rounds); ratios compare graphs of the same
precision measured in the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from dataclasses import asdict
from typing import Any, Sequence

from .bench import (BenchSettings, Variant, environment, export_labels, quantile, read_job, run_benchmark,
                    timed)
from .layout import DECODER_FILE_NAMES, INT8, PORTABLE, read_export_report

DECODER = "decoder"  # the Variant.kind of a graph timed here
PHASES = ("prefill", "decode")
DENSE_FP32, DENSE_INT8 = "onnx dense", "onnx dense int8"


def dense_decoder_variants(dense_model: str, work_dir: str) -> list[Variant]:
    """Optimum's export of the dense causal LM (a folder, or a ``.gguf`` file de-quantized by transformers) and its
    int8 form, written once per model into ``work_dir``."""
    folder = os.path.join(work_dir, "dense-lm-" + hashlib.sha1(os.path.abspath(dense_model).encode()).hexdigest()[:12])
    if not os.path.isfile(os.path.join(folder, DECODER_FILE_NAMES[INT8])):
        from transformers import AutoModelForCausalLM

        from peft_rankdyna.loading import load_tokenizer, model_location

        from .decoder import export_causal_lm

        path, gguf = model_location(dense_model)
        model = AutoModelForCausalLM.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
        export_causal_lm(model, load_tokenizer(path, gguf), folder, int8=True)
    return [Variant(name, DECODER, os.path.join(folder, DECODER_FILE_NAMES[variant]))
            for name, variant in ((DENSE_FP32, PORTABLE), (DENSE_INT8, INT8))]


def compact_decoder_variants(export_dir: str, label: str) -> list[Variant]:
    """The graphs a causal-LM export wrote (fp32, and int8 when it was written)."""
    written = read_export_report(export_dir)["variants"]
    return [Variant(f"{label} {'fp32' if name == PORTABLE else name}", DECODER,
                    os.path.join(export_dir, DECODER_FILE_NAMES[name]), label) for name in written]


def write_tokens(tokenizer: Any, settings: BenchSettings, path: str) -> None:
    """Real text's token ids, enough for the largest prefill, saved once so workers need no tokenizer."""
    import numpy as np

    from .decoder import validation_tokens

    np.savez(path, tokens=validation_tokens(tokenizer, max(settings.batch_sizes) * max(settings.seq_lens)))


def measure_decoder(variant: Variant, settings: BenchSettings) -> dict[str, list[float]]:
    """Timed prefill and decoding runs (seconds) per batch size and length, in this process (the worker's job)."""
    import numpy as np

    from .decoder import cache_feeds, decode_inputs, empty_cache, positions
    from .runtime import create_session, runner

    tokens = np.load(settings.inputs_file)["tokens"]
    session = create_session(variant.path, settings.provider, settings.threads or os.cpu_count() or 1)
    output_names = [o.name for o in session.get_outputs()]
    times: dict[str, list[float]] = {}
    for batch_size, length in settings.shapes:
        ids = tokens[: batch_size * length].reshape(batch_size, length)
        mask = np.ones_like(ids)
        prefill = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}
        prefill_feeds = {**prefill, **empty_cache(session, batch_size)}
        outputs = session.run(None, prefill_feeds)
        step = decode_inputs(prefill, outputs[0][:, -1].argmax(-1))
        decode_feeds = {**step, **cache_feeds(output_names, outputs)}
        for phase, feeds in zip(PHASES, (prefill_feeds, decode_feeds)):
            times[f"{phase} {batch_size}x{length}"] = timed(runner(session, feeds), settings)
    return times


def summarize_decoder(variants: Sequence[Variant], samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Median and p90 per graph, phase and shape; tokens per second; the ratio to the dense graph of the same
    precision (int8 against int8) in the same phase and shape."""
    rows = []
    for variant in variants:
        for key, times in samples.get(variant.name, {}).items():
            phase, shape = key.split()
            batch_size, length = map(int, shape.split("x"))
            median = statistics.median(times)
            new_tokens = batch_size * (length if phase == "prefill" else 1)
            rows.append({"variant": variant.name, "group": variant.group, "precision": _precision(variant.name),
                         "phase": phase, "batch_size": batch_size, "seq_len": length, "runs": len(times),
                         "median_ms": 1000 * median, "p90_ms": 1000 * quantile(times, 0.9),
                         "tokens_per_s": new_tokens / median})
    for row in rows:
        dense = DENSE_INT8 if row["precision"] == "int8" else DENSE_FP32
        same = [r["median_ms"] for r in rows if r["variant"] == dense and
                (r["phase"], r["batch_size"], r["seq_len"]) == (row["phase"], row["batch_size"], row["seq_len"])]
        row["latency_vs_dense"] = row["median_ms"] / same[0] if same else None
    return rows


def _precision(name: str) -> str:
    return "int8" if name.endswith("int8") else "fp32"


def markdown_decoder(rows: Sequence[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    """The rows as a Markdown table, with the environment and the command."""
    header = ["phase", "batch × length", "graph", "median ms", "p90 ms", "tokens/s", "latency vs dense (same precision)",
              "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (PHASES.index(r["phase"]), r["seq_len"], r["batch_size"], r["precision"],
                                         r["median_ms"])):
        ratio = "" if r["latency_vs_dense"] is None else f"{r['latency_vs_dense']:.3f}"
        lines.append(f"| {r['phase']} | {r['batch_size']} × {r['seq_len']} | {r['variant']} | {r['median_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['tokens_per_s']:.1f} | {ratio} | {r['runs']} |")
    notes = ("prefill: the prompt of `length` tokens through an empty cache; decode: one new token per row with a "
             "`length`-token cache (the time per generated token). int8: 8-bit weights (MatMulNBits), dense and "
             "compact alike.")
    env_text = ", ".join(f"{k} {v}" for k, v in env.items())
    return "\n".join(lines) + f"\n\n{notes}\n\nEnvironment: {env_text}.\n\nCommand: `{command}`\n"


def benchmark_decoder(export_dirs: Sequence[str], dense_model: str, settings: BenchSettings, out_prefix: str,
                      command: str, work_dir: str, seed: int = 0) -> dict[str, Any]:
    """Time the dense graphs and every graph of ``export_dirs``; write ``OUT.json`` and ``OUT.md``."""
    from transformers import AutoTokenizer

    from peft_rankdyna.io import atomic_write_text

    os.makedirs(work_dir, exist_ok=True)
    variants = dense_decoder_variants(dense_model, work_dir)
    for export_dir, label in zip(export_dirs, export_labels(export_dirs)):
        variants += compact_decoder_variants(export_dir, label)
    inputs_file = os.path.join(work_dir, "bench_tokens.npz")
    settings = BenchSettings(**{**asdict(settings), "inputs_file": inputs_file})
    write_tokens(AutoTokenizer.from_pretrained(export_dirs[0]), settings, inputs_file)
    samples, _ = run_benchmark(variants, settings, seed)
    rows = summarize_decoder(variants, samples)
    env = environment(settings.provider, settings.threads or os.cpu_count() or 1)
    results = {"environment": env, "settings": asdict(settings), "command": command, "rows": rows}
    atomic_write_text(out_prefix + ".json", json.dumps(results, indent=1))
    atomic_write_text(out_prefix + ".md", markdown_decoder(rows, env, command))
    return results


def is_decoder_export(export_dir: str) -> bool:
    """Whether an export folder holds a causal LM's graphs (its report's task)."""
    from .decoder import DECODER_TASK

    return read_export_report(export_dir).get("task") == DECODER_TASK


if __name__ == "__main__":  # the worker process of one graph (bench.WORKERS)
    print(json.dumps(measure_decoder(*read_job(sys.argv[1]))))
