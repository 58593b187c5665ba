"""ONNX export of RankDyna compact models (source folder ``exporters/``, import name ``rankdyna_exporters``).

The compact model type is taught to Optimum's exporter by ``peft_rankdyna.registry`` on
``import peft_rankdyna``; this package depends on ``peft_rankdyna``, never the reverse.

- ``fusion``: export-time attention modules that become one fused attention op per layer;
- ``export`` / ``validation`` / ``fp16`` / ``int8``: the graphs of an export folder, each checked before it is kept;
- ``runtime``: execution-provider choice and sessions; ``bench``: the latency benchmark.
"""

import importlib.util


def require_onnx_extras() -> None:
    """Raise one clear ImportError when the ``onnx`` extra is not installed."""
    missing = [name for name in ("optimum.exporters.onnx", "onnxruntime", "onnx")
               if importlib.util.find_spec(name.split(".")[0]) is None or importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'peft-rankdyna[onnx]' "
                          "(or 'peft-rankdyna[onnx-gpu]' for onnxruntime-gpu).")
