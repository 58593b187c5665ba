"""Human-readable summaries of what a run produced."""

from __future__ import annotations

from typing import Any


def format_results(results: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`peft_rankdyna.pipeline.compress`'s results."""
    settings = results["settings"]
    method = "dense fine-tuning" if settings["budget"] is None else f"RankDyna, budget {settings['budget']:g}"
    lines = [f"{settings['task']} dev ({method}, {results['train_steps']} steps):"]
    lines += [f"  {name:<22}{value:.4f}" for name, value in results["metrics"].items()]
    if "target_params_before" in results:
        before, after = results["target_params_before"], results["target_params_after"]
        lines.append(f"  {'target-matrix params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    before, after = results["model_params_before"], results["model_params_after"]
    lines.append(f"  {'model params':<22}{before:,} -> {after:,} ({after / before:.1%})")
    lines.append(f"  {'wall time':<22}{results['wall_time_s']:.1f} s")
    return "\n".join(lines)
