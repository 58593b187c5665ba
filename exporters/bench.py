"""Latency benchmark: PyTorch eager dense, the best dense ONNX graph, and every compact graph, side by side.

Each variant is timed in a fresh process (a session created after a large one was freed can run
~40% slower in the same process, from the allocator), variants run in a shuffled order in every
round, and the medians and 90th percentiles are taken over all timed runs of all rounds. Ratios
compare medians measured in the same benchmark run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable, Collection, Optional, Sequence

from .layout import FILE_NAMES, FP16, INT8, REPORT_NAME, read_export_report

PYTORCH_DENSE, ONNX_DENSE_RAW, ONNX_DENSE_ORT = "pytorch dense", "onnx dense (raw)", "onnx dense (ort-optimized)"
ONNX_DENSE_FP16 = "onnx dense fp16 (ort-optimized)"  # on CUDA: the optimizer's BERT Attention fusion, in fp16
ONNX_DENSE_INT8 = "onnx dense int8"  # on the CPU: what an Optimum user gets from ORTQuantizer, our int8 settings
DENSE_ONNX = (ONNX_DENSE_RAW, ONNX_DENSE_ORT, ONNX_DENSE_FP16, ONNX_DENSE_INT8)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"  # runtime's names, without importing onnxruntime


@dataclass(frozen=True)
class Variant:
    """One graph (or the PyTorch model) to time; ``kind`` is ``"onnx"``, ``"torch"`` or ``"decoder"`` (a causal LM's
    graph with its KV cache, :mod:`.bench_decoder`)."""

    name: str
    kind: str
    path: str
    group: str = ""  # the export folder a compact graph comes from; "" for the dense references
    optional: bool = False  # a variant that may fail here (torch.compile): recorded as failed, not fatal

    @property
    def compact(self) -> bool:
        return bool(self.group)


@dataclass(frozen=True)
class BenchSettings:
    """What every worker measures: shapes, runs, provider and threads."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_lens: tuple[int, ...] = (128,)
    rounds: int = 3
    runs_per_round: int = 10
    warmup: int = 5
    provider: str = "CPUExecutionProvider"
    threads: int = 0  # 0: one per CPU core
    inputs_file: str = ""  # tokenised inputs per shape (.npz), written once so workers need no tokenizer

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(b, s) for s in self.seq_lens for b in self.batch_sizes]


def dense_variants(dense_dir: str, architecture: str, num_labels: int, work_dir: str,
                   provider: str = CPU) -> list[Variant]:
    """PyTorch eager and the dense ONNX graphs (raw Optimum export and its onnxruntime-optimized form).

    On the CPU also the raw export dynamically quantized to int8 with the settings of our int8 graphs
    (the reference a CPU user would pick); on CUDA also what a careful GPU user deploys: the optimizer's BERT Attention fusion in fp16, and
    PyTorch in fp16, eager and (when it works here) ``torch.compile``d. The dense graphs are exported
    once per (model folder, architecture, labels) into ``work_dir``.
    """
    key = hashlib.sha1(f"{os.path.abspath(dense_dir)}|{architecture}|{num_labels}".encode()).hexdigest()[:12]
    folder = os.path.join(work_dir, f"dense-{key}")
    raw, optimized, half, int8 = (os.path.join(folder, name) for name in (
        "model.onnx", "model_ort.onnx", "model_ort_fp16.onnx", "model_int8.onnx"))
    cuda = provider == CUDA
    if not os.path.isfile(optimized) or not os.path.isfile(half if cuda else int8):
        _export_dense(dense_dir, architecture, num_labels, folder, fp16=cuda)
    spec = f"{dense_dir}::{architecture}::{num_labels}"
    variants = [Variant(PYTORCH_DENSE, "torch", spec), Variant(ONNX_DENSE_RAW, "onnx", raw),
                Variant(ONNX_DENSE_ORT, "onnx", optimized)]
    if cuda:
        variants += [Variant(ONNX_DENSE_FP16, "onnx", half), *torch_fp16_variants(spec, "pytorch dense")]
    else:
        variants.append(Variant(ONNX_DENSE_INT8, "onnx", int8))
    return variants


def torch_fp16_variants(spec: str, name: str, group: str = "") -> list[Variant]:
    """PyTorch in fp16 on CUDA, eager and compiled (the compiled one may fail on a machine: optional)."""
    return [Variant(f"{name} fp16", "torch", f"{spec}::fp16", group),
            Variant(f"{name} fp16 compiled", "torch", f"{spec}::fp16::compile", group, optional=True)]


def _export_dense(dense_dir: str, architecture: str, num_labels: int, folder: str, fp16: bool = False) -> None:
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.exporters.tasks import TasksManager

    model = _load_dense(dense_dir, architecture, num_labels)
    onnx_export_from_model(model, folder, task=TasksManager.infer_task_from_model(model), do_validation=False)
    config = model.config
    optimize = partial(optimize_model, os.path.join(folder, "model.onnx"), model_type="bert",
                       num_heads=config.num_attention_heads, hidden_size=config.hidden_size, opt_level=0)
    optimize(use_gpu=False).save_model_to_file(os.path.join(folder, "model_ort.onnx"))
    if not fp16:
        from .int8 import Int8Options, quantize

        quantize(folder, "model.onnx", "model_int8.onnx", Int8Options())
    else:
        optimized = optimize(use_gpu=True)
        optimized.convert_float_to_float16(keep_io_types=True)
        optimized.save_model_to_file(os.path.join(folder, "model_ort_fp16.onnx"))


def _load_dense(dense_dir: str, architecture: str, num_labels: int) -> Any:
    import transformers

    if architecture == COMPACT:
        from peft_rankdyna.compact import AutoCompactModel

        return AutoCompactModel.from_pretrained(dense_dir).eval()
    cls = getattr(transformers, architecture)
    kwargs = {"num_labels": num_labels} if "Classification" in architecture else {}
    return cls.from_pretrained(dense_dir, **kwargs).eval()


COMPACT = "compact"  # the "architecture" of a torch variant that loads a compact folder
_RUNS_ONLY_ON = {FP16: CUDA, INT8: CPU}  # reduced-precision graphs are timed where they are meant to run


def compact_variants(export_dir: str, provider: str, label: str, compact_dir: Optional[str] = None) -> list[Variant]:
    """The graphs an export wrote (the fp16 graph only on CUDA, the int8 graph only on the CPU: where each is meant
    to run) and, given the compact folder it came from, on CUDA the compact model in PyTorch fp16."""
    written = read_export_report(export_dir)["variants"]
    variants = [Variant(f"{label} {name}", "onnx", os.path.join(export_dir, FILE_NAMES[name]), label)
                for name in written if _RUNS_ONLY_ON.get(name, provider) == provider]
    if compact_dir is not None and provider == CUDA:
        variants += torch_fp16_variants(f"{compact_dir}::{COMPACT}::0", f"{label} pytorch", label)
    return variants


def write_inputs(tokenizer: Any, settings: BenchSettings, path: str) -> None:
    """Real sentence pairs tokenised at every shape, saved as ``{batch}x{seq}/{input name}`` arrays."""
    import numpy as np

    from .validation import tokenised_inputs

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    arrays = {f"{b}x{s}/{name}": value for b, s in settings.shapes
              for name, value in tokenised_inputs(tokenizer, b, s, names).items()}
    np.savez(path, **arrays)


def measure(variant: Variant, settings: BenchSettings) -> dict[str, list[float]]:
    """Timed runs (seconds) per shape of one variant, in this process (the worker's job)."""
    import numpy as np

    from .runtime import create_session, runner

    inputs = np.load(settings.inputs_file)
    threads = settings.threads or os.cpu_count() or 1
    if variant.kind == "torch":
        make_call, input_names = _torch_runner(variant, settings, threads)
    else:
        session = create_session(variant.path, settings.provider, threads)
        input_names = [i.name for i in session.get_inputs()]
        make_call = partial(runner, session)
    times: dict[str, list[float]] = {}
    for batch_size, seq_len in settings.shapes:
        shape = f"{batch_size}x{seq_len}"
        times[shape] = timed(make_call({name: inputs[f"{shape}/{name}"] for name in input_names}), settings)
    return times


def timed(call: Callable[[], Any], settings: BenchSettings) -> list[float]:
    """``settings.warmup`` untimed calls, then the seconds of each of ``settings.runs_per_round`` calls."""
    for _ in range(settings.warmup):
        call()
    samples = []
    for _ in range(settings.runs_per_round):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _torch_runner(variant: Variant, settings: BenchSettings, threads: int) -> tuple[Any, list[str]]:
    import torch

    dense_dir, architecture, num_labels, *options = variant.path.split("::")
    torch.set_num_threads(threads)
    device = "cuda" if settings.provider == CUDA else "cpu"
    model = _load_dense(dense_dir, architecture, int(num_labels)).to(device)
    if "fp16" in options:
        model = model.half()
    forward = torch.compile(model) if "compile" in options else model
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in model.forward.__code__.co_varnames]

    def run_once(feeds: dict[str, Any]) -> Any:
        tensors = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}

        @torch.inference_mode()
        def call() -> None:
            forward(**tensors)
            if device == "cuda":
                torch.cuda.synchronize()

        return call

    return run_once, names


def run_benchmark(variants: Sequence[Variant], settings: BenchSettings, seed: int = 0, progress: bool = True
                  ) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """All timed runs per variant and shape: ``rounds`` rounds, shuffled order, one fresh process per variant.

    Also returns the optional variants that failed on this machine, with the end of their error."""
    order = random.Random(seed)
    samples: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    failed: dict[str, str] = {}
    for round_index in range(settings.rounds):
        shuffled = list(variants)
        order.shuffle(shuffled)
        for variant in shuffled:
            if variant.name in failed:
                continue
            if progress:
                print(f"  round {round_index + 1}/{settings.rounds}: {variant.name}", flush=True)
            try:
                timed = _in_fresh_process(variant, settings)
            except RuntimeError as error:
                if not variant.optional:
                    raise
                failed[variant.name] = str(error)[-500:]
                print(f"  {variant.name} failed here and is left out: {str(error).splitlines()[-1]}", flush=True)
                continue
            for shape, times in timed.items():
                samples[variant.name].setdefault(shape, []).extend(times)
    return {name: times for name, times in samples.items() if name not in failed}, failed


# The module whose worker times a variant of each kind (named, not imported: bench_decoder builds on this module).
WORKERS = {"onnx": "rankdyna_exporters.bench", "torch": "rankdyna_exporters.bench",
           "decoder": "rankdyna_exporters.bench_decoder"}


def _in_fresh_process(variant: Variant, settings: BenchSettings) -> dict[str, list[float]]:
    job = json.dumps({"variant": asdict(variant), "settings": asdict(settings)})
    result = subprocess.run([sys.executable, "-m", WORKERS[variant.kind], job], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Timing {variant.name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(variants: Sequence[Variant], samples: dict[str, dict[str, list[float]]],
              flops_ratio: dict[tuple[str, int], float]) -> list[dict[str, Any]]:
    """Median, p90, throughput, and (for compact graphs) latency and FLOP ratios against the best dense ONNX graph."""
    rows = []
    for variant in variants:
        for shape, times in samples.get(variant.name, {}).items():
            batch_size, seq_len = map(int, shape.split("x"))
            median = statistics.median(times)
            rows.append({"variant": variant.name, "group": variant.group, "compact": variant.compact,
                         "batch_size": batch_size,
                         "seq_len": seq_len, "runs": len(times), "median_ms": 1000 * median,
                         "p90_ms": 1000 * quantile(times, 0.9), "sequences_per_s": batch_size / median})
    for row in rows:
        dense = [r["median_ms"] for r in rows if r["variant"] in DENSE_ONNX
                 and (r["batch_size"], r["seq_len"]) == (row["batch_size"], row["seq_len"])]
        row["latency_ratio"] = row["median_ms"] / min(dense) if dense else None
        row["flops_ratio"] = flops_ratio[row["group"], row["seq_len"]] if row["compact"] else 1.0
    return rows


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest timed run at or above it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def choose(rows: Sequence[dict[str, Any]], group: str, batch_size: int, seq_len: int) -> dict[str, Any]:
    """The graph of export ``group`` with the lowest median at (``batch_size``, ``seq_len``), and why."""
    candidates = sorted((r for r in rows if r["group"] == group and (r["batch_size"], r["seq_len"]) ==
                         (batch_size, seq_len)), key=lambda r: r["median_ms"])
    if not candidates:
        raise ValueError(f"No compact graph was timed at batch {batch_size} × sequence {seq_len}.")
    best = candidates[0]
    others = ", ".join(f"{r['variant']} {r['median_ms']:.2f} ms" for r in candidates[1:])
    return {"variant": best["variant"].removeprefix(f"{group} "), "shape": [batch_size, seq_len],
            "why": f"lowest median latency at batch {batch_size} × seq {seq_len}: {best['median_ms']:.2f} ms"
                   + (f" (vs {others})" if others else "")}


def environment(provider: str, threads: int) -> dict[str, Any]:
    """Machine, provider and library versions for the results."""
    import onnxruntime
    import torch
    import transformers

    from .runtime import onnxruntime_distributions

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if "model name" in line),
               platform.processor())
    info = {"machine": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
            "provider": provider, "onnxruntime": onnxruntime.__version__, "distributions": onnxruntime_distributions(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    if provider == "CUDAExecutionProvider":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readlines()
    except OSError:
        return []


def markdown(rows: Sequence[dict[str, Any]], env: dict[str, Any], command: str,
             chosen: Optional[dict[str, dict[str, Any]]] = None, failed: Optional[dict[str, str]] = None) -> str:
    """The rows as a Markdown table with the environment and the command that produced them."""
    header = ["variant", "batch × seq", "median ms", "p90 ms", "seq/s", "latency vs best dense ONNX",
              "FLOPs vs dense", "latency ratio / FLOP ratio", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (r["seq_len"], r["batch_size"], r["group"], r["median_ms"])):
        ratio = r["latency_ratio"]
        over = ratio / r["flops_ratio"] if ratio is not None and r["compact"] else None
        lines.append("| " + " | ".join([
            r["variant"], f"{r['batch_size']} × {r['seq_len']}", f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
            f"{r['sequences_per_s']:.1f}", "" if ratio is None else f"{ratio:.3f}", f"{r['flops_ratio']:.3f}",
            "" if over is None else f"{over:.2f}", str(r["runs"])]) + " |")
    text = "\n".join(lines) + "\n\n"
    for group, choice in (chosen or {}).items():
        text += f"Chosen for {group} on {env['provider']}: **{choice['variant']}** — {choice['why']}.\n\n"
    for name, error in (failed or {}).items():
        text += f"Not timed: {name} failed on this machine (`{error.strip().splitlines()[-1]}`).\n\n"
    env_text = ", ".join(f"{k} {v}" for k, v in env.items())
    return text + f"Environment: {env_text}.\n\nCommand: `{command}`\n"


def benchmark(export_dirs: Sequence[str], dense_dir: str, settings: BenchSettings, out_prefix: str,
              command: str, work_dir: str, choose_shape: Optional[tuple[int, int]] = None,
              seed: int = 0, compact_dirs: Optional[Sequence[str]] = None,
              only: Optional[Collection[str]] = None) -> dict[str, Any]:
    """Time dense references and every compact graph of ``export_dirs`` in one run; write ``OUT.json``/``OUT.md``.

    With ``choose_shape`` the fastest graph of each export at that (batch, sequence) is recorded in
    its ``rankdyna_export.json`` under ``"chosen"`` for this provider. ``work_dir`` caches the dense
    graphs and holds the tokenised inputs. ``compact_dirs`` (the compact folders the exports came
    from, in the same order) add the compact models in PyTorch on CUDA. ``only`` (variant names)
    times just those, for a caller that reports a few of the graphs.
    """
    from transformers import AutoConfig, AutoTokenizer

    from peft_rankdyna.io import atomic_write_text
    from peft_rankdyna.accounting import flops_ratio

    labels = export_labels(export_dirs)
    config = AutoConfig.from_pretrained(export_dirs[0])  # Optimum saves the base model's config beside the graph
    variants = dense_variants(dense_dir, config.architectures[0], config.num_labels, work_dir, settings.provider)
    flops = {}
    for export_dir, label, compact_dir in zip(export_dirs, labels, compact_dirs or [None] * len(export_dirs)):
        variants += compact_variants(export_dir, settings.provider, label, compact_dir)
        counts = read_export_report(export_dir)["flops"]
        flops.update({(label, s): flops_ratio(counts, s) for s in settings.seq_lens})
    if only is not None:
        unknown = set(only) - {v.name for v in variants}
        if unknown:
            raise ValueError(f"No such variants to time: {', '.join(sorted(unknown))}.")
        variants = [v for v in variants if v.name in only]
    inputs_file = os.path.join(work_dir, "bench_inputs.npz")
    settings = BenchSettings(**{**asdict(settings), "inputs_file": inputs_file})
    write_inputs(AutoTokenizer.from_pretrained(export_dirs[0]), settings, inputs_file)
    samples, failed = run_benchmark(variants, settings, seed)
    rows = summarize(variants, samples, flops)
    env = environment(settings.provider, settings.threads or os.cpu_count() or 1)
    chosen = {label: choose(rows, label, *choose_shape) for label in labels} if choose_shape else {}
    for export_dir, label in zip(export_dirs, labels):
        if label in chosen:
            _record_choice(export_dir, settings.provider, chosen[label])
    results = {"environment": env, "settings": asdict(settings), "command": command, "rows": rows, "chosen": chosen,
               "failed": failed}
    atomic_write_text(out_prefix + ".json", json.dumps(results, indent=1))
    atomic_write_text(out_prefix + ".md", markdown(rows, env, command, chosen, failed))
    return results


def export_labels(export_dirs: Sequence[str]) -> list[str]:
    """A name per export folder for the tables: its folder name, or its path where two names are the same."""
    names = [os.path.basename(os.path.normpath(d)) for d in export_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in export_dirs]


def _record_choice(export_dir: str, provider: str, choice: dict[str, Any]) -> None:
    from peft_rankdyna.io import atomic_write_text

    report = read_export_report(export_dir)
    report.setdefault("chosen", {})[provider] = {**choice, "file": FILE_NAMES[choice["variant"]]}
    atomic_write_text(os.path.join(export_dir, REPORT_NAME), json.dumps(report, indent=1))


def read_job(job_text: str) -> tuple[Variant, BenchSettings]:
    """The variant and settings a worker process is given (as JSON on its command line)."""
    job = json.loads(job_text)
    settings = job["settings"]
    settings = BenchSettings(**{**settings, "batch_sizes": tuple(settings["batch_sizes"]),
                                "seq_lens": tuple(settings["seq_lens"])})
    return Variant(**job["variant"]), settings


def _worker(job_text: str) -> None:
    print(json.dumps(measure(*read_job(job_text))))


if __name__ == "__main__":
    _worker(sys.argv[1])
