"""ONNX export of RankDyna compact models (source folder ``exporters/``, import name ``rankdyna_exporters``).

Importing it teaches Optimum's exporter the compact model type (``onnx_config``), so
``optimum.exporters.onnx.main_export`` exports a compact folder; this package depends on
``peft_rankdyna`` (the compact format, its accounting and pooling spec), never on its jobs, and
``peft_rankdyna`` never imports it while loading.

- ``onnx_config``: the compact type's Optimum ONNX config; ``pooled``: sentence-embedding pooling in the graph;
- ``fusion``: export-time attention modules that become one fused attention op per layer;
- ``export`` / ``validation`` / ``fp16`` / ``int8``: the graphs of an export folder, each checked before it is kept;
- ``decoder``: a causal LM's graph with its KV cache, checked in prefill and decoding, and its 8-bit-weight graph;
- ``runtime``: execution-provider choice and sessions; ``bench``: the latency benchmark (``bench_decoder``: its
  prefill-and-decoding mode for causal LMs).
"""

import importlib.util


def require_onnx_extras() -> None:
    """Raise one clear ImportError when the ``onnx`` extra is not installed."""
    missing = [name for name in ("optimum.exporters.onnx", "onnxruntime", "onnx")
               if importlib.util.find_spec(name.split(".")[0]) is None or importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'peft-rankdyna[onnx]' "
                          "(or 'peft-rankdyna[onnx-gpu]' for onnxruntime-gpu).")


if importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.exporters.onnx") is not None:
    from .onnx_config import register_onnx_config

    register_onnx_config()
