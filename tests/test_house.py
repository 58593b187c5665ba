"""The house rules that code review enforces: import directions, no cycles, import cost, facts the README states."""

import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

PACKAGES = {"peft_rankdyna": os.path.join(REPO_ROOT, "peft_rankdyna"),
            "rankdyna_exporters": os.path.join(REPO_ROOT, "exporters")}


def _modules() -> dict[str, str]:
    """Every module of both packages, by dotted name (``pkg.sub.__init__`` is the package ``pkg.sub``)."""
    found = {}
    for package, root in PACKAGES.items():
        for folder, _, files in os.walk(root):
            for file in files:
                if file.endswith(".py"):
                    relative = os.path.relpath(os.path.join(folder, file), root)[:-3].replace(os.sep, ".")
                    name = package if relative == "__init__" else f"{package}.{relative.removesuffix('.__init__')}"
                    found[name] = os.path.join(folder, file)
    return found


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """Modules of the two packages that ``name`` imports anywhere in its file (module level or inside functions)."""
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        targets |= {c for c in candidates if c in modules}
    # Importing a submodule first runs its package's __init__: that implicit edge is not a design choice.
    return {t for t in targets if not name.startswith(t + ".")} - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    graph = _graph()
    graph["peft_rankdyna.budget"] = graph["peft_rankdyna.budget"] | {"peft_rankdyna.allocator"}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import cycle: .*peft_rankdyna.allocator"):
        test_the_import_graph_has_no_cycle()


def test_peft_rankdyna_depends_on_the_exporters_only_in_the_cli():
    graph = _graph()
    importers = {m for m, targets in graph.items() if m.startswith("peft_rankdyna")
                 and any(t.startswith("rankdyna_exporters") for t in targets)}
    assert importers <= {"peft_rankdyna.cli"}, importers


def test_the_math_imports_neither_peft_nor_the_trainer():
    for module in ("budget", "allocator", "importance"):
        source = open(os.path.join(PACKAGES["peft_rankdyna"], f"{module}.py"), encoding="utf-8").read()
        assert not re.search(r"^\s*(from|import) (peft|transformers)\b", source, re.M), module


def test_every_module_imports_alone_and_the_package_leaves_the_exporters_unloaded():
    modules = sorted(_modules())
    script = (
        "import importlib, sys, peft, transformers\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith(('peft_rankdyna', 'rankdyna_exporters'))]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "for loaded in [m for m in sys.modules if m.startswith(('peft_rankdyna', 'rankdyna_exporters'))]:\n"
        "    del sys.modules[loaded]\n"
        "import peft_rankdyna\n"
        "print(sorted(m for m in sys.modules if m.startswith('rankdyna_exporters')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_cost_beyond_peft_and_transformers_is_under_a_second():
    script = ("import time, peft, transformers\nstart = time.perf_counter()\nimport peft_rankdyna\n"
              "print(time.perf_counter() - start)")
    seconds = min(float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                                       check=True).stdout) for _ in range(2))
    assert seconds < 1.0, seconds


def test_readme_group_costs_are_the_code_s():
    from peft_rankdyna.budget import group_cost

    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    ffn, attention = group_cost(1536, 384), group_cost(384, 384)
    sentence = re.search(r"a group of a wide FFN matrix \((\d+) parameters in MiniLM\) must earn ([\d.]+)× what a\s+"
                         r"group of a square attention matrix \((\d+)\)", readme)
    assert sentence, "the README no longer states the group costs"
    assert (int(sentence[1]), float(sentence[2]), int(sentence[3])) == (ffn, ffn / attention, attention)


def test_trainer_internals_the_checkpoints_rely_on_are_there():
    from transformers import Trainer

    from peft_rankdyna.trainer import check_trainer_internals

    check_trainer_internals(Trainer)

    class Upgraded(Trainer):
        def _save_checkpoint(self, model, trial):  # a future transformers that writes elsewhere
            self.save_model("somewhere")

    with pytest.raises(RuntimeError, match="Install transformers 4.57"):
        check_trainer_internals(Upgraded)


def test_recorded_commands_name_no_path_of_the_machine(tmp_path, monkeypatch):
    from peft_rankdyna.io import portable_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    model = "/opt/venv/site-packages/minilm/model"
    argv = ["rankdyna", "compress", "--model", model, "--glue-dir", "/data/glue/", "--output", str(tmp_path / "out x"),
            "--finetuned-model", model + "/finetuned", "--task", "mrpc"]
    assert portable_command(argv, {model: "$MODEL"}) == (
        "rankdyna compress --model $MODEL --glue-dir $GLUE_DIR --output 'out x' --finetuned-model $MODEL/finetuned "
        "--task mrpc")


def test_committed_results_name_no_path_of_the_machine_they_ran_on():
    results = os.path.join(REPO_ROOT, "benchmarks", "results")
    offenders = []
    for folder, _, files in os.walk(results):
        for file in files:
            if file.endswith((".json", ".jsonl", ".md", ".log")):
                text = open(os.path.join(folder, file), encoding="utf-8").read()
                offenders += [f"{file}: {m}" for m in re.findall(r"(?:/work|/tmp|/root|/home)/[^\s\"']+", text)[:1]]
    assert not offenders, offenders
