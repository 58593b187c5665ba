"""Which onnxruntime execution provider to use, and sessions on it.

``onnxruntime`` and ``onnxruntime-gpu`` install the same module and overwrite each other's files,
so an environment holding both has whichever was installed last; that is worth a warning.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any, Callable, Optional

from . import require_onnx_extras

require_onnx_extras()
logger = logging.getLogger("rankdyna_exporters")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA}


def onnxruntime_distributions() -> list[str]:
    """Installed distributions that provide the ``onnxruntime`` module."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def warn_if_both_installed() -> None:
    """Warn when onnxruntime and onnxruntime-gpu share one environment (they overwrite each other)."""
    found = onnxruntime_distributions()
    if len(found) > 1:
        logger.warning("Both %s are installed; they install the same module and overwrite each other. Keep one: "
                       "pip uninstall onnxruntime onnxruntime-gpu, then install peft-rankdyna[onnx] or [onnx-gpu].",
                       " and ".join(found))


def cuda_available() -> bool:
    """Whether onnxruntime has the CUDA provider and a CUDA device is visible."""
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return True


def choose_provider(requested: Optional[str] = None) -> str:
    """``requested`` ("cpu"/"cuda"), or CUDA when available and CPU otherwise; logs one line saying which."""
    import onnxruntime

    warn_if_both_installed()
    if requested is not None:
        if requested not in PROVIDER_NAMES:
            raise ValueError(f"Unknown provider {requested!r}; choose cpu or cuda.")
        provider = PROVIDER_NAMES[requested]
        if provider == CUDA and not cuda_available():
            raise ValueError("The CUDA provider was asked for, but onnxruntime-gpu with a CUDA device is not "
                             f"available here (providers: {', '.join(onnxruntime.get_available_providers())}).")
        reason = "as requested"
    elif cuda_available():
        provider, reason = CUDA, "onnxruntime-gpu and a CUDA device are present"
    else:
        provider, reason = CPU, "no CUDA provider with a device here"
    logger.info("rankdyna: onnxruntime %s on %s (%s)", onnxruntime.__version__, provider, reason)
    return provider


def create_session(path: str, provider: str = CPU, threads: Optional[int] = None, profile_prefix: Optional[str] = None
                   ) -> Any:
    """An inference session on ``provider`` with all graph optimisations and ``threads`` intra-op threads.

    ``profile_prefix`` turns on onnxruntime's profiler (its trace file starts with that path). When
    a provider other than the CPU is asked for and onnxruntime cannot start it (a missing CUDA or
    cuDNN library, say), onnxruntime falls back to the CPU with only a log line; that would make a
    "CUDA" latency or correctness result a CPU one, so it is an error here.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    providers = [provider] if provider == CPU else [provider, CPU]
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    active = session.get_providers()[0]
    if active != provider:
        raise RuntimeError(f"onnxruntime {onnxruntime.__version__} could not start {provider} for {path} and fell "
                           f"back to {active}; see onnxruntime's log above (on CUDA: are the "
                           "CUDA and cuDNN libraries it was built for installed? `import torch` first, or "
                           "onnxruntime.preload_dlls(), loads those of a matching PyTorch).")
    return session


def runner(session: Any, feeds: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument function that runs ``session`` on ``feeds`` once.

    On CUDA it uses IO binding: the inputs are copied to the device once, here, and outputs stay on
    the device, so repeated calls time the model rather than host-device copies.
    """
    import onnxruntime

    if session.get_providers()[0] != CUDA:
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, onnxruntime.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def chosen_graph(export_dir: str, provider: str) -> str:
    """Path of the graph ``rankdyna bench --choose`` measured fastest on ``provider`` for this export.

    Without a recorded choice for ``provider`` it is the portable ``model.onnx``, and the log says so.
    """
    from .layout import FILE_NAMES, PORTABLE, read_export_report

    chosen = read_export_report(export_dir).get("chosen", {})
    if provider in chosen:
        logger.info("rankdyna: %s for %s (%s)", chosen[provider]["file"], provider, chosen[provider]["why"])
        return os.path.join(export_dir, chosen[provider]["file"])
    logger.info("rankdyna: no graph measured on %s for %s (run `rankdyna bench --choose`); using %s", provider,
                export_dir, FILE_NAMES[PORTABLE])
    return os.path.join(export_dir, FILE_NAMES[PORTABLE])
