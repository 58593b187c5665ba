"""A sentence-embedding model exports with its pooling (and normalisation) inside every graph."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, tiny_tokenizer

pytest.importorskip("optimum.exporters.onnx", reason="pip install 'peft-rankdyna[onnx]'")
pytest.importorskip("onnxruntime", reason="pip install 'peft-rankdyna[onnx]'")

from peft_rankdyna.baselines import factor_model  # noqa: E402
from peft_rankdyna.pooling import Pooling, pool  # noqa: E402
from rankdyna_exporters import runtime  # noqa: E402
from rankdyna_exporters.export import FILE_NAMES, FUSED, FUSED_ORT, PORTABLE, export  # noqa: E402
from rankdyna_exporters.validation import tokenised_inputs  # noqa: E402


def describe_pooling(folder, mode, normalize, hidden_size):
    """Write the sentence-transformers description of an encoder folder: Transformer, Pooling (, Normalize)."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden_size, "pooling_mode_mean_tokens": mode == "mean",
         "pooling_mode_cls_token": mode == "cls", "pooling_mode_max_tokens": mode == "max"}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules[:3 if normalize else 2]))


def _embedding_folder(folder, mode, normalize):
    """A tiny compact BERT encoder saved with a sentence-transformers pooling description."""
    from transformers import AutoModel

    torch.manual_seed(0)
    compact = factor_model(AutoModel.from_config(TINY_CONFIGS["bert"]()), 0.4)
    compact.save_pretrained(folder, tokenizer=tiny_tokenizer(str(folder) + "-tokenizer"))
    describe_pooling(folder, mode, normalize, compact.config.hidden_size)
    return compact.eval()


@pytest.mark.parametrize("mode, normalize", [("mean", True), ("cls", False), ("max", True)])
def test_every_graph_outputs_the_pooled_sentence_embedding(tmp_path, mode, normalize):
    model = _embedding_folder(tmp_path / "compact", mode, normalize)
    report = export(str(tmp_path / "compact"), str(tmp_path / "onnx"))
    assert report["task"] == "feature-extraction" and report["pooling"] == {"mode": mode, "normalize": normalize}
    assert (tmp_path / "onnx" / "1_Pooling" / "config.json").is_file()  # the description travels with the graphs
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    for variant in (PORTABLE, FUSED, FUSED_ORT):
        assert report["variants"][variant]["max_abs_diff"]["sentence_embedding"] <= 1e-4
        session = runtime.create_session(str(tmp_path / "onnx" / FILE_NAMES[variant]), runtime.CPU)
        feeds = tokenised_inputs(tokenizer, 4, 16, [i.name for i in session.get_inputs()])
        names = [o.name for o in session.get_outputs()]
        embedding = session.run(None, feeds)[names.index("sentence_embedding")]
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
        expected = pool(hidden, torch.from_numpy(feeds["attention_mask"]), Pooling(mode, normalize)).numpy()
        np.testing.assert_allclose(embedding, expected, atol=1e-4)
        if normalize:
            np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, atol=1e-5)


def test_a_folder_without_pooling_exports_token_states_only(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    factor_model(AutoModel.from_config(TINY_CONFIGS["bert"]()), 0.4).save_pretrained(
        tmp_path / "c", tokenizer=tiny_tokenizer(str(tmp_path / "tok")))
    report = export(str(tmp_path / "c"), str(tmp_path / "onnx"))
    assert report["pooling"] is None
    assert list(report["variants"][PORTABLE]["max_abs_diff"]) == ["last_hidden_state"]


def test_sentence_transformers_onnx_backend_loads_the_export(tmp_path):
    """sentence-transformers' own ONNX backend runs our graphs (their token states, its pooling) and gives the
    vectors of the graphs' own pooled output and of the PyTorch model."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _embedding_folder(tmp_path / "compact", "mean", True)
    export(str(tmp_path / "compact"), str(tmp_path / "onnx"))
    texts = ["hello world", "a longer sentence with a few more words in it", "x"]
    expected = sentence_transformers.SentenceTransformer(str(tmp_path / "compact"), device="cpu").encode(texts)
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tmp_path / "onnx")(texts, padding=True, return_tensors="np")
    for variant in (PORTABLE, FUSED):
        loaded = sentence_transformers.SentenceTransformer(str(tmp_path / "onnx"), backend="onnx", device="cpu",
                                                           model_kwargs={"file_name": FILE_NAMES[variant]})
        np.testing.assert_allclose(loaded.encode(texts), expected, atol=1e-5)
        session = runtime.create_session(str(tmp_path / "onnx" / FILE_NAMES[variant]), runtime.CPU)
        feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
        graph = session.run(["sentence_embedding"], feeds)[0]
        np.testing.assert_allclose(graph, expected, atol=1e-5)
