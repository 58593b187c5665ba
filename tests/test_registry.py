import json
import subprocess
import sys
import textwrap

import torch
from conftest import custom_loop, tiny_batch, tiny_model
from peft import get_peft_model


from peft_rankdyna import RankDynaConfig


def test_save_and_load_in_a_fresh_process(tmp_path):
    base = tiny_model()
    base.save_pretrained(tmp_path / "base")
    config = RankDynaConfig(target_budget=0.3, tinit=2, tfinal=2, deltaT=2, total_step=10, task_type="SEQ_CLS")
    model = get_peft_model(base, config)
    model.print_trainable_parameters()
    custom_loop(model, 10)
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    torch.save({"batch": batch, "ranks": model.base_model.ranks()}, tmp_path / "inputs.pt")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "RANKDYNA"

    script = textwrap.dedent(f"""
        import torch
        import peft_rankdyna
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification
        base = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "base")!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        saved = torch.load({str(tmp_path / "inputs.pt")!r})
        assert model.base_model.ranks() == saved["ranks"], "ranks differ after loading"
        with torch.no_grad():
            torch.save(model(**saved["batch"]).logits, {str(tmp_path / "loaded.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "loaded.pt"), expected)
    assert (expected - tiny_model().eval()(**batch).logits).abs().max() > 1e-3  # training changed the model
