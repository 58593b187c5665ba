"""benchmarks/deploy_cpu.py: a smoke run on tiny models laid out as the GLUE grid leaves them."""

import csv
import json
import os

import pytest
import torch
from conftest import TINY_CONFIGS, load_benchmark, tiny_compact_folder, tiny_tokenizer

pytest.importorskip("optimum.onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")


def _dev_metrics_by_hand(model, folder, glue_dir):
    """MRPC dev accuracy and F1 of a torch ``model`` with the tokenizer in ``folder``: the TSV read here, one padded
    batch, the metrics counted by hand. Also the smallest logit margin (how far from a tie any prediction is)."""
    from transformers import AutoTokenizer

    with open(os.path.join(glue_dir, "MRPC", "dev.tsv"), encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    labels = torch.tensor([int(r[0]) for r in rows])
    batch = AutoTokenizer.from_pretrained(folder)([r[3] for r in rows], [r[4] for r in rows], padding=True,
                                                  truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    predicted = logits.argmax(-1)
    true_positive = int(((predicted == 1) & (labels == 1)).sum())
    wrong = int((predicted != labels).sum())
    return ({"accuracy": 1 - wrong / len(labels), "f1": 2 * true_positive / (2 * true_positive + wrong)},
            float((logits[:, 1] - logits[:, 0]).abs().min()))


def test_deploy_benchmark_scores_times_and_plots_every_graph(tmp_path, monkeypatch, glue_dir):
    from transformers import BertForSequenceClassification

    deploy = load_benchmark("deploy_cpu")
    torch.manual_seed(0)  # the two random models below, so the dev metrics recomputed at the end are fixed
    config = TINY_CONFIGS["bert"]()
    config.max_position_embeddings = 128  # the benchmark times sequences of 128
    runs = tmp_path / "runs"
    dense = runs / "mrpc-dense-dense-s42-lr5e-05" / "finetuned"
    BertForSequenceClassification(config).save_pretrained(dense)
    tiny_tokenizer(str(dense))
    compact = str(runs / "mrpc-rankdyna-0.5-s42-lr5e-05" / "compact")
    tiny_compact_folder(compact, model=BertForSequenceClassification(config))
    common = ["deploy_cpu.py", "--runs", str(runs), "--tasks", "mrpc", "--seeds", "42", "--budgets", "0.5",
              "--glue-dir", glue_dir, "--rounds", "1", "--int8-min-agreement", "0.5", "--work-dir", str(tmp_path / "work")]
    monkeypatch.setattr("sys.argv", [*common, "--prepare-only"])  # the graphs only: nothing scored or timed
    deploy.main()
    made = sorted((tmp_path / "work").rglob("rankdyna_export.json")) + sorted((tmp_path / "work").rglob("model_int8.onnx"))
    assert len(made) == 3 and not list((tmp_path / "work").rglob("bench*.json"))
    stamps = [path.stat().st_mtime_ns for path in made]
    monkeypatch.setattr("sys.argv", [*common, "--out", str(tmp_path / "d")])
    deploy.main()
    assert [path.stat().st_mtime_ns for path in made] == stamps  # the timed run reuses the prepared graphs
    timed = json.loads((tmp_path / "work" / "mrpc-s42" / "bench.json").read_text())
    bench_names = {row["variant"] for row in timed["rows"]}  # only the graphs the table reports were timed
    assert bench_names == {"rankdyna-0.5 fused", "rankdyna-0.5 int8", "rankdyna-0.5-trimmed int8",
                           "onnx dense (raw)", "onnx dense int8"}
    from rankdyna_exporters.bench import BenchSettings, benchmark

    exports = [str(p.parent) for p in sorted((tmp_path / "work").rglob("rankdyna_export.json"))]
    with pytest.raises(ValueError, match="No such variants to time: rankdyna-0.5 fp16"):
        benchmark(exports, str(dense), BenchSettings(), str(tmp_path / "b"), "", str(tmp_path / "work" / "mrpc-s42"),
                  only={"rankdyna-0.5 fp16", "onnx dense int8"})
    result = json.loads((tmp_path / "d.json").read_text())
    assert str(tmp_path) not in json.dumps(result["rows"])  # the graphs are named without this machine's paths
    assert {row["path"].split("/")[0] for row in result["rows"]} == {"$WORK_DIR"}
    graphs = {row["graph"] for row in result["table"]}
    assert graphs == {"dense fp32", "dense int8", "RankDyna 0.5 fp32", "RankDyna 0.5 int8",
                      "RankDyna 0.5 int8, trimmed vocab"}
    # Latencies: every graph's medians are the ones its variant got in the bench run's own record, and the
    # ratio column is recomputed from those (batch 8 against dense int8's).
    medians = {(r["variant"], r["batch_size"]): r["median_ms"] for r in timed["rows"]}
    variant = {row["graph"]: row["bench_name"] for row in result["rows"]}
    reference = medians["onnx dense int8", 8]
    for row in result["table"]:
        assert row["median_ms"] == {str(b): pytest.approx(medians[variant[row["graph"]], b]) for b in (1, 8, 32)}
        assert row["vs_dense_int8_b8"] == pytest.approx(medians[variant[row["graph"]], 8] / reference)
        assert set(row["metrics"]) == {"accuracy", "f1"} and row["file_mib"] > 0
    assert len({round(row["vs_dense_int8_b8"], 9) for row in result["table"]}) > 1  # not one ratio for all
    by_graph = {row["graph"]: row for row in result["table"]}
    # Dev metrics: the fp32 graphs score what the torch models they were exported from score on MRPC's dev set.
    from transformers import BertForSequenceClassification as Bert

    from peft_rankdyna.compact import AutoCompactModel

    for graph, model, folder in (("dense fp32", Bert.from_pretrained(dense), dense),
                                 ("RankDyna 0.5 fp32", AutoCompactModel.from_pretrained(compact), compact)):
        expected, margin = _dev_metrics_by_hand(model, folder, glue_dir)
        assert margin > 1e-4, graph  # no prediction near a tie: ONNX and torch rounding cannot flip one
        assert by_graph[graph]["metrics"] == pytest.approx(expected, abs=1e-9), graph
    assert by_graph["RankDyna 0.5 int8, trimmed vocab"]["file_mib"] < by_graph["RankDyna 0.5 int8"]["file_mib"]
    assert (tmp_path / "d.png").stat().st_size > 0 and "$RUNS" in (tmp_path / "d.md").read_text()
    with pytest.raises(SystemExit, match="Run the grid first"):
        monkeypatch.setattr("sys.argv", ["deploy_cpu.py", "--runs", str(runs), "--tasks", "mrpc", "--seeds", "43",
                                         "--glue-dir", glue_dir, "--out", str(tmp_path / "e")])
        deploy.main()
