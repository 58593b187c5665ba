"""The results of a job as a person reads them: a short plain-text summary of ``results.json``."""

from __future__ import annotations

from typing import Any


def format_results(results: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`peft_rankdyna.jobs.runner.compress`'s results."""
    settings = results["settings"]
    names = {"rankdyna": "RankDyna", "svd": "SVD + fine-tuning", "fwsvd": "FWSVD + fine-tuning",
             "asvd": "ASVD + fine-tuning", "svdllm": "SVD-LLM + fine-tuning"}
    method = "dense fine-tuning" if settings["budget"] is None else (
        f"{names[settings.get('method', 'rankdyna')]}, budget {settings['budget']:g}")
    data = settings.get("validation_texts") or settings.get("texts") or settings.get("validation_file") or settings["task"]
    # With a step cap the steps say how long it trained, not the epochs.
    epochs = settings.get("epochs") if settings.get("max_steps", -1) <= 0 else None
    length = "" if epochs is None else f"{epochs:g} epochs, "
    lines = [f"{data} dev ({method}, {length}{results['train_steps']} steps):"]
    lines += [f"  {name:<22}{value:.4f}" for name, value in results["metrics"].items()]
    if results.get("collapse", {}).get("collapsed"):
        lines.append(f"  WARNING: {results['collapse']['message']}. These numbers are not a result; see the "
                     "section on collapsed runs in docs/usage.md.")
    if "target_params_before" in results:
        before, after = results["target_params_before"], results["target_params_after"]
        lines.append(f"  {'target-matrix params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    before, after = results["model_params_before"], results["model_params_after"]
    lines.append(f"  {'model params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    if "rank_multiple" in results:
        lines.append(f"  {'rank rounding':<22}multiples of {results['rank_multiple']}: target params "
                     f"{results['target_params_before_rounding']:,} allocated -> {results['target_params_after']:,}")
    if "compact_dir" in results:
        lines.append(f"  {'compact model':<22}{results['compact_dir']} ({results['file_size_bytes'] / 2**20:.1f} MiB, "
                     f"{results['flops_ratio']:.3f} of dense FLOPs/token)")
    if "finetuned_dir" in results:
        lines.append(f"  {'fine-tuned model':<22}{results['finetuned_dir']}")
    if settings.get("finetuned_model"):
        lines.append(f"  {'first round':<22}reused from {settings['finetuned_model']} (not in the wall time)")
    resumed = results.get("resumed_from_step")
    lines.append(f"  {'wall time':<22}{results['wall_time_s']:.1f} s"
                 + (f" (resumed at step {resumed}: this process only)" if resumed else ""))
    return "\n".join(lines)
