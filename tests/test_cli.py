import subprocess
import sys

import pytest

from peft_rankdyna.jobs.cli import build_parser, main


def test_help_explains_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["compress"].format_help()
    for option in ["--model", "--task", "--budget", "--dense", "--glue-dir", "--tinit", "--tfinal", "--delta-t",
                   "--init-budget", "--epochs", "--lr", "--max-steps", "--allocation", "--importance-updates",
                   "--rank-multiple"]:
        assert option in text


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "peft_rankdyna.jobs.cli", "compress", "--help"], capture_output=True,
                            text=True, check=True)
    assert "parameter" in result.stdout


def test_bad_budget_is_one_clear_line(tmp_path, capsys, glue_dir):
    from conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "m")
    code = main(["compress", "--model", str(tmp_path / "m"), "--task", "mrpc", "--output", str(tmp_path / "o"),
                 "--budget", "1.5", "--glue-dir", glue_dir])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "target_budget" in err


def test_unknown_task_and_missing_model_are_one_line(tmp_path, capsys):
    assert main(["compress", "--model", str(tmp_path), "--task", "nope", "--output", str(tmp_path / "o")]) == 2
    assert "Unknown GLUE task" in capsys.readouterr().err
    assert main(["compress", "--model", str(tmp_path / "missing"), "--task", "mrpc", "--output", "o"]) == 2
    assert "not found" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--task", "mrpc"])
    assert exit_info.value.code == 2
