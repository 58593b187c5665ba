"""Your own data files: column inference, label mapping, and one clear error per kind of bad input."""

import json

import numpy as np
import pytest

from peft_rankdyna.jobs.data.files import load_files
from peft_rankdyna.jobs.data.labelled import compute_metrics


def _write(path, rows, header=None, sep=","):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows))
    return str(path)


def test_csv_pairs_with_string_labels(tmp_path):
    header = ["id", "sentence1", "sentence2", "label"]
    train = _write(tmp_path / "train.csv", [["1", "a b", "c", "yes"], ["2", "d", "e f", "no"], ["3", "g", "h", "no"]], header)
    dev = _write(tmp_path / "dev.csv", [["4", "i", "j", "yes"]], header)
    train_split, dev_split, task = load_files(train, dev)
    assert task.text_columns == ("sentence1", "sentence2") and task.labels == ("no", "yes")
    assert train_split.labels == [1, 0, 0] and dev_split.texts == [["i"], ["j"]]
    assert task.metric_names == ("accuracy", "f1") and not task.is_regression
    assert task.label_maps() == {"id2label": {0: "no", 1: "yes"}, "label2id": {"no": 0, "yes": 1}}


def test_tsv_single_text_column_is_inferred_and_three_classes_get_macro_f1(tmp_path):
    rows = [["great film", "2"], ["dull", "0"], ["fine", "1"], ["ok", "1"]]
    train = _write(tmp_path / "train.tsv", rows, ["review", "stars"], sep="\t")
    _, _, task = load_files(train, train, label_column="stars")
    assert task.text_columns == ("review",) and task.labels == ("0", "1", "2")
    assert task.metric_names == ("accuracy", "macro_f1")
    logits = np.eye(3)[[2, 0, 1, 0]]
    assert compute_metrics(task, logits, np.array([2, 0, 1, 1]))["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # per class: F1 1, 2/3, 2/3


def test_jsonl_float_labels_mean_regression(tmp_path):
    rows = [{"text": "a", "label": 0.5}, {"text": "b", "label": 4}, {"text": "c", "label": "3.0"}]
    train = _write(tmp_path / "train.jsonl", rows)
    train_split, _, task = load_files(train, train)
    assert task.is_regression and task.metric_names == ("pearson", "spearmanr") and train_split.labels == [0.5, 4.0, 3.0]
    assert task.label_maps() == {}


def test_named_text_columns(tmp_path):
    rows = [{"q": "a", "p": "b", "c": "x", "label": 1}, {"q": "d", "p": "e", "c": "y", "label": 0}]
    train = _write(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match="cannot tell the text columns among q, p, c; name one or two with --text-columns"):
        load_files(train, train)
    assert load_files(train, train, text_columns=["p", "q"])[2].text_columns == ("p", "q")


# One test per kind of bad input: each error names the file and the line or the column.

def test_missing_column(tmp_path):
    train = _write(tmp_path / "train.csv", [["a", "1"], ["b", "0"]], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"train.csv: no column 'title' \(columns: sentence, label\)"):
        load_files(train, train, text_columns=["title"])
    with pytest.raises(ValueError, match=r"train.csv: no label column 'y' \(columns: sentence, label\)"):
        load_files(train, train, label_column="y")


def test_empty_file(tmp_path):
    train = _write(tmp_path / "train.csv", [["a", "1"], ["b", "0"]], ["sentence", "label"])
    (tmp_path / "dev.csv").write_text("sentence,label\n")
    with pytest.raises(ValueError, match=r"dev.csv: no data rows below the header"):
        load_files(train, str(tmp_path / "dev.csv"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: the file is empty"):
        load_files(str(tmp_path / "empty.jsonl"), train)


def test_a_dev_label_the_training_file_does_not_have(tmp_path):
    train = _write(tmp_path / "train.csv", [["a", "pos"], ["b", "neg"]], ["sentence", "label"])
    dev = _write(tmp_path / "dev.csv", [["c", "pos"], ["d", "neutral"]], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"dev.csv:3: label 'neutral' does not occur in the training file .*train.csv"):
        load_files(train, dev)


def test_non_numeric_labels_for_regression(tmp_path):
    train = _write(tmp_path / "train.csv", [["a", "0.5"], ["b", "high"], ["c", "2.0"]], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"train.csv:3: label 'high' is not a number, but '0.5' \(line 2\) makes this a "
                                         "regression file"):
        load_files(train, train)
    good = _write(tmp_path / "good.csv", [["a", "0.5"], ["c", "2.0"]], ["sentence", "label"])
    dev = _write(tmp_path / "dev.csv", [["a", "1.5"], ["c", "n/a"]], ["sentence", "label"])
    with pytest.raises(ValueError, match=r"dev.csv:3: label 'n/a' is not a number"):
        load_files(good, dev)


def test_a_text_column_empty_in_every_row(tmp_path):
    train = _write(tmp_path / "train.csv", [["a", "", "1"], ["b", " ", "0"]], ["sentence1", "sentence2", "label"])
    with pytest.raises(ValueError, match=r"train.csv: text column 'sentence2' is empty in every row"):
        load_files(train, train)


def test_unknown_file_type_and_bad_json(tmp_path):
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(ValueError, match=r"train.txt: unknown file type '.txt'"):
        load_files(str(tmp_path / "train.txt"), str(tmp_path / "train.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", label}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_files(str(tmp_path / "bad.jsonl"), str(tmp_path / "bad.jsonl"))


def test_compress_on_own_files_saves_the_label_names_and_checks_before_loading(tmp_path, tiny_glue_model):
    from peft_rankdyna.jobs.cli import main
    from peft_rankdyna.compact import AutoCompactModel

    words = ["good", "bad", "great", "awful", "nice", "poor"]
    rows = [[f"{w} movie {i}", "pos" if w in ("good", "great", "nice") else "neg"] for i in range(8) for w in words]
    train = _write(tmp_path / "train.csv", rows, ["text", "label"])
    dev = _write(tmp_path / "dev.csv", rows[:12], ["text", "label"])
    out = tmp_path / "out"
    assert main(["compress", "--model", tiny_glue_model, "--train-file", train, "--validation-file", dev, "--output",
                 str(out), "--budget", "0.5", "--max-steps", "6", "--tinit", "1", "--tfinal", "1", "--delta-t", "1",
                 "--max-seq-length", "16", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"accuracy", "f1"} and "collapse" in results
    compact = AutoCompactModel.from_pretrained(out / "compact")
    assert compact.config.id2label == {0: "neg", 1: "pos"}
    bad = _write(tmp_path / "bad.csv", [["x", "maybe"]], ["text", "label"])
    assert main(["compress", "--model", str(tmp_path / "no-such-model"), "--train-file", train, "--validation-file", bad,
                 "--output", str(tmp_path / "o2")]) == 2  # the data error comes first, before the model is looked for
