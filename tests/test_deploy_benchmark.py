"""benchmarks/deploy_cpu.py: a smoke run on tiny models laid out as the GLUE grid leaves them."""

import json

import pytest
from conftest import TINY_CONFIGS, load_benchmark, tiny_compact_folder, tiny_tokenizer

pytest.importorskip("optimum.onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")


def test_deploy_benchmark_scores_times_and_plots_every_graph(tmp_path, monkeypatch, glue_dir):
    from transformers import BertForSequenceClassification

    deploy = load_benchmark("deploy_cpu")
    config = TINY_CONFIGS["bert"]()
    config.max_position_embeddings = 128  # the benchmark times sequences of 128
    runs = tmp_path / "runs"
    dense = runs / "mrpc-dense-dense-s42-lr5e-05" / "finetuned"
    BertForSequenceClassification(config).save_pretrained(dense)
    tiny_tokenizer(str(dense))
    tiny_compact_folder(str(runs / "mrpc-rankdyna-0.5-s42-lr5e-05" / "compact"),
                        model=BertForSequenceClassification(config))
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
    for row in result["table"]:
        assert set(row["median_ms"]) == {"1", "8", "32"} and all(v > 0 for v in row["median_ms"].values())
        assert 0 <= row["metrics"]["accuracy"] <= 1 and row["file_mib"] > 0
    by_graph = {row["graph"]: row for row in result["table"]}
    assert by_graph["dense int8"]["vs_dense_int8_b8"] == 1.0
    assert by_graph["RankDyna 0.5 int8, trimmed vocab"]["file_mib"] < by_graph["RankDyna 0.5 int8"]["file_mib"]
    assert (tmp_path / "d.png").stat().st_size > 0 and "$RUNS" in (tmp_path / "d.md").read_text()
    with pytest.raises(SystemExit, match="Run the grid first"):
        monkeypatch.setattr("sys.argv", ["deploy_cpu.py", "--runs", str(runs), "--tasks", "mrpc", "--seeds", "43",
                                         "--glue-dir", glue_dir, "--out", str(tmp_path / "e")])
        deploy.main()
