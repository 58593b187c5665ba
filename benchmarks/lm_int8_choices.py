"""Which int8 graph a causal LM can ship: dynamic int8 (the encoders' choice) against 8-bit weights only.

    python benchmarks/lm_int8_choices.py --exports $DENSE_ONNX $COMPACT_ONNX --out benchmarks/results/lm_int8_choices

Each export folder holds a causal LM's fp32 graph with its KV cache (``rankdyna export``; the dense
model's through ``rankdyna_exporters.decoder.export_causal_lm``). Every candidate is written from
that graph and checked as the export checks its int8 graph: the share of real-text positions (4 rows
× 64 tokens of the validation sentences) at which it predicts the fp32 graph's next token, the
Pearson correlation of the logits, and the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from typing import Any, Callable

from rankdyna_exporters import int8 as dynamic
from rankdyna_exporters.decoder import quantize_weights, token_agreement
from rankdyna_exporters.runtime import CPU, create_session


def _dynamic(options: dynamic.Int8Options, exclude: str = "") -> Callable[[str, str, str], None]:
    """Dynamic int8 through Optimum's ORTQuantizer, leaving out the MatMuls whose name holds ``exclude``."""

    def write(folder: str, source: str, target: str) -> None:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
        import onnx

        nodes = [n.name for n in onnx.load(os.path.join(folder, source), load_external_data=False).graph.node
                 if exclude and exclude in n.name]
        config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=options.per_channel,
                                                    operators_to_quantize=options.operators, nodes_to_exclude=nodes)
        with tempfile.TemporaryDirectory() as scratch:
            written = ORTQuantizer.from_pretrained(folder, file_name=source).quantize(config, save_dir=scratch,
                                                                                       file_suffix="q")
            os.replace(os.path.join(written, source.replace(".onnx", "_q.onnx")), target)

    return write


CANDIDATES: dict[str, Callable[[str, str, str], None]] = {
    "dynamic int8, per channel, embeddings int8 (the encoders' default)": _dynamic(dynamic.Int8Options()),
    "dynamic int8, per channel, embeddings fp32": _dynamic(dynamic.Int8Options(embeddings=False)),
    "dynamic int8, per tensor, embeddings fp32": _dynamic(dynamic.Int8Options(embeddings=False, per_channel=False)),
    "dynamic int8, per channel, down_proj in fp32": _dynamic(dynamic.Int8Options(embeddings=False), "down_proj"),
    "8-bit weights only (MatMulNBits, block 32; the export's int8)":
        lambda folder, source, target: quantize_weights(os.path.join(folder, source), target) and None,
}


def measure(export_dir: str) -> list[dict[str, Any]]:
    """Every candidate's agreement with the fp32 graph of ``export_dir``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    reference = create_session(os.path.join(export_dir, "model.onnx"), CPU)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, write in CANDIDATES.items():
            target = os.path.join(scratch, "candidate.onnx")
            write(export_dir, "model.onnx", target)
            result = token_agreement(create_session(target, CPU), reference, tokenizer)
            rows.append({"export": export_dir, "candidate": name, **result, "file_mib": os.path.getsize(target) / 2**20})
            print(f"{os.path.basename(export_dir)}: {name}: {result['agreement']:.2%}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", nargs="+", required=True, help="causal-LM export folders (fp32 model.onnx)")
    parser.add_argument("--labels", nargs="+", default=None, help="a name per export for the table")
    parser.add_argument("--out", required=True, help="results path without extension")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(e)) for e in args.exports]
    rows = [{**row, "label": label} for export_dir, label in zip(args.exports, labels) for row in measure(export_dir)]
    command = "python benchmarks/lm_int8_choices.py " + shlex.join(sys.argv[1:])
    lines = ["| model | int8 graph | next token as fp32 | logits correlation | file MiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['candidate']} | {r['agreement']:.2%} of {r['positions']} | {r['correlation']:.4f} | "
              f"{r['file_mib']:.0f} |" for r in rows]
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + f"\n\nCommand: `{command}`\n")
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({"command": command, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
