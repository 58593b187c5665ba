import numpy as np
import pytest

from peft_rankdyna.jobs.data.glue import get_task, load_glue, read_tsv
from peft_rankdyna.jobs.data.labelled import compute_metrics


@pytest.mark.parametrize("task, split, rows", [("mrpc", "train", 3668), ("mrpc", "dev", 408), ("cola", "dev", 1043),
                                               ("sst2", "dev", 872)])
def test_reads_the_official_files(glue_dir, task, split, rows):
    data = load_glue(get_task(task), split, glue_dir)
    assert len(data.labels) == rows
    assert all(len(column) == rows for column in data.texts)
    assert set(data.labels) == {0, 1}


def test_mrpc_has_two_sentences_and_no_bom(glue_dir):
    data = load_glue(get_task("MRPC"), "dev", glue_dir)
    assert len(data.texts) == 2
    assert not data.texts[0][0].startswith("\ufeff")


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def test_unknown_task():
    with pytest.raises(ValueError, match="Unknown GLUE task 'mrcp'"):
        get_task("mrcp")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        load_glue(get_task("sst2"), "train", str(tmp_path))


def test_wrong_header(tmp_path):
    path = _write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match="no column 'sentence'"):
        read_tsv(get_task("sst2"), path)


def test_too_few_columns_names_the_line(tmp_path):
    path = _write(tmp_path / "cola.tsv", "src\t1\t\tGood sentence.\nsrc\t0\n")
    with pytest.raises(ValueError, match=r"cola.tsv:2: 2 columns"):
        read_tsv(get_task("cola"), path)


def test_label_outside_the_label_set(tmp_path):
    path = _write(tmp_path / "sst.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n")
    with pytest.raises(ValueError, match=r"sst.tsv:3: label '2'"):
        read_tsv(get_task("sst2"), path)


def test_empty_split(tmp_path):
    path = _write(tmp_path / "sst.tsv", "sentence\tlabel\n")
    with pytest.raises(ValueError, match="empty"):
        read_tsv(get_task("sst2"), path)


def test_non_utf8(tmp_path):
    path = _write(tmp_path / "sst.tsv", b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_tsv(get_task("sst2"), path)


def test_stsb_regression_scores(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = _write(tmp_path / "stsb.tsv", header + "0\tg\tf\ty\t0\ts\ts\tA man.\tA person.\t4.2\n")
    data = read_tsv(get_task("sts-b"), path)
    assert data.labels == [4.2] and data.texts == [["A man."], ["A person."]]


def test_metrics():
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert compute_metrics(get_task("mrpc"), logits, [0, 1, 0, 0]) == {"accuracy": 0.75, "f1": pytest.approx(2 / 3)}
    assert compute_metrics(get_task("cola"), logits, [0, 1, 1, 0])["matthews_correlation"] == pytest.approx(1.0)
    scores = compute_metrics(get_task("stsb"), np.array([[1.0], [2.0], [3.0]]), [1.0, 2.5, 2.9])
    assert scores["spearmanr"] == pytest.approx(1.0)


def test_no_glue_dir_and_no_datasets_says_what_to_do(monkeypatch):
    import builtins

    monkeypatch.delenv("GLUE_DIR", raising=False)
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match=r"GLUE_DIR.*peft-rankdyna\[hub\]"):
        load_glue(get_task("mrpc"), "train")
