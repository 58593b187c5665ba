"""The house rules that code review enforces: import directions, no cycles, import cost, and the facts
the README and the docs/ pages state (checked against the code and the committed results)."""

import ast
import json
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
    assert importers <= {"peft_rankdyna.jobs.cli"}, importers


def test_the_library_and_the_exporters_never_import_the_jobs():
    graph = _graph()
    importers = {m for m, targets in graph.items() if not m.startswith("peft_rankdyna.jobs")
                 and any(t.startswith("peft_rankdyna.jobs") for t in targets)}
    assert not importers, importers


def test_the_jobs_check_finds_a_library_module_importing_a_job(monkeypatch):
    graph = _graph()
    graph["peft_rankdyna.model"] = graph["peft_rankdyna.model"] | {"peft_rankdyna.jobs.plots"}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: graph)
    with pytest.raises(AssertionError, match="peft_rankdyna.model"):
        test_the_library_and_the_exporters_never_import_the_jobs()


def test_every_objective_is_registered_and_offered_by_the_cli():
    from peft_rankdyna.jobs.cli import OBJECTIVE_NAMES
    from peft_rankdyna.jobs.objectives import OBJECTIVES, Objective
    from peft_rankdyna.jobs.settings import METHODS

    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES
    for name, objective in OBJECTIVES.items():
        assert issubclass(objective, Objective) and objective.name == name
        assert set(objective.methods) <= set(METHODS) and "rankdyna" in objective.methods and objective.export_task


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


# --- Facts the README and the docs/ pages state, checked against the code and the committed results ---

RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")


def _pages() -> dict[str, str]:
    """README.md and every docs/*.md page, by path relative to the repository root."""
    paths = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO_ROOT, "docs"))
                                   if f.endswith(".md"))
    return {path: open(os.path.join(REPO_ROOT, path), encoding="utf-8").read() for path in paths}


def _outside_code(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every markdown table outside code blocks: (the heading above it, header cells, body rows' cells)."""
    tables, heading, block = [], "", []
    for line in _outside_code(text) + [""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            block.append([cell.strip() for cell in stripped.strip("|").split("|")])
            continue
        if len(block) > 2:
            tables.append((heading, block[0], block[2:]))
        block = []
        if stripped.startswith("#"):
            heading = stripped
    return tables


def _plain(cell: str) -> str:
    """A table cell without markup: bold, the † and ‡ marks."""
    return cell.replace("**", "").replace("†", "").replace("‡", "").strip()


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_the_readme_and_docs_pages_are_checked():
    pages = _pages()
    readme = pages["README.md"]
    assert len(pages) > 1, "docs/ has no pages"
    for path in pages:
        if path != "README.md":
            assert f"]({path})" in readme, f"the README does not link {path}"


def test_readme_group_costs_are_the_code_s():
    from peft_rankdyna.budget import group_cost

    ffn, attention = group_cost(1536, 384), group_cost(384, 384)
    found = 0
    for path, text in _pages().items():
        for sentence in re.finditer(r"a group of a wide FFN matrix \((\d+) parameters in MiniLM\) must earn ([\d.]+)× "
                                    r"what a\s+group of a square attention matrix \((\d+)\)", text):
            found += 1
            assert (int(sentence[1]), float(sentence[2]), int(sentence[3])) == (ffn, ffn / attention, attention), path
    assert found, "neither the README nor docs/ states the group costs any more"


def test_links_of_the_readme_and_docs_reach_files_and_headings():
    pages = _pages()
    anchors = {path: {_anchor(line) for line in _outside_code(text) if line.startswith("#")}
               for path, text in pages.items()}
    broken = []
    for path, text in pages.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(_outside_code(text))):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(os.path.join(REPO_ROOT, resolved)):
                broken.append(f"{path}: {target} (no such file)")
            elif anchor and resolved in anchors and anchor not in anchors[resolved]:
                broken.append(f"{path}: {target} (no such heading)")
    assert not broken, broken


def _glue_summary(name: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """A glue.py summary (glue.md, glue_h200.md): (task, budget, method) -> metric column -> "mean ± std"."""
    rows = {}
    for heading, header, body in _tables(open(os.path.join(RESULTS, name), encoding="utf-8").read()):
        task = heading.lstrip("#").strip()
        for cells in body:
            budget = "—" if cells[0] == "dense" else cells[0]
            rows[(task, budget, _plain(cells[1]).removesuffix(" allocation"))] = dict(
                zip(header, map(_plain, cells)))
    return rows


def test_grid_tables_are_the_glue_summaries():
    summaries = {"glue.md": _glue_summary("glue.md"), "glue_h200.md": _glue_summary("glue_h200.md")}
    columns = {"MRPC acc": ("MRPC", "accuracy"), "MRPC F1": ("MRPC", "f1"),
               "CoLA Matthews": ("COLA", "matthews_correlation"), "SST-2 acc": ("SST2", "accuracy")}
    checked = 0
    for path, text in _pages().items():
        for heading, header, body in _tables(text):
            if "MRPC acc" not in header:
                continue
            default = "glue_h200.md" if "H200" in heading else "glue.md"
            for cells in body:
                for column, cell in zip(header, cells):
                    name = re.sub(r" \(.*\)$", "", column)
                    if name not in columns or "±" not in cell:
                        continue
                    source = ("glue_h200.md" if "(H200" in column else
                              "glue.md" if "(CPU" in column else default)
                    task, metric = columns[name]
                    row = summaries[source].get((task, cells[0], _plain(cells[1])))
                    assert row is not None, f"{path}: {cells[0]} {cells[1]} is not in {source}'s {task} table"
                    assert _plain(cell) == row[metric], f"{path}: {cells[1]} at {cells[0]}, {column}: {cell} " \
                                                        f"but {source} has {row[metric]}"
                    checked += 1
    assert checked >= 50, f"only {checked} grid figures found"


def _runs(name: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(RESULTS, name), encoding="utf-8") if line.strip()]


def test_the_six_epoch_table_is_the_runs_files():
    runs = _runs("glue_runs.jsonl") + _runs("glue_runs_6ep.jsonl")
    methods = {"FWSVD + FT": "fwsvd", "RankDyna": "rankdyna", "dense": "dense"}
    rows = 0
    for path, text in _pages().items():
        assert not re.search(r"leads FWSVD \+ FT on MRPC at both\s+budgets", text), path
        for _, header, body in _tables(text):
            if header[2:3] != ["MRPC acc, seeds 42 / 43 / 44"]:
                continue
            for cells in body:
                method, epochs = re.fullmatch(r"(.+) \((\d+)(?: \+ \d+)?\)", cells[1]).groups()
                budget = None if cells[0] == "—" else float(cells[0])
                found = {r["cell"]["seed"]: r["metrics"] for r in runs
                         if r["cell"]["task"] == "mrpc" and r["cell"]["method"] == methods[method]
                         and r["cell"]["budget"] == budget and r["cell"]["epochs"] == float(epochs)}
                stated = cells[2].split(" / ")
                for seed, value in zip((42, 43, 44), stated):
                    if value == "—":
                        assert seed not in found, (path, cells[:2], seed)
                    else:
                        assert value == f"{found[seed]['accuracy']:.4f}", (path, cells[:2], seed)
                accuracy = [found[s]["accuracy"] for s in sorted(found)]
                f1 = [found[s]["f1"] for s in sorted(found)]
                mean = sum(accuracy) / len(accuracy)
                std = (sum((a - mean) ** 2 for a in accuracy) / (len(accuracy) - 1)) ** 0.5
                assert cells[3] == f"{mean:.4f} ± {std:.4f}", (path, cells[:2])
                assert cells[4] == f"{sum(f1) / len(f1):.4f}", (path, cells[:2])
                rows += 1
    assert rows >= 8, "the 6-epoch table is gone from the README and docs/"


def test_int8_figures_are_the_committed_files():
    choices = json.load(open(os.path.join(RESULTS, "int8_choices.json"), encoding="utf-8"))["rows"]
    timed = json.load(open(os.path.join(RESULTS, "int8_min_rank.json"), encoding="utf-8"))["rows"]
    default = "all products and embeddings, per channel"
    rankdyna = [r["agreement"] for r in choices if r["candidate"] == default and "rankdyna" in r["model"]]
    dense = [r["agreement"] for r in choices if r["candidate"] == default and "dense" in r["model"]]
    by_model = {}
    for r in timed:
        by_model.setdefault(r["model"], {})[r["candidate"]] = r["median_ms_b8x128"]
    pairs = {(f"{ms[default]:.1f}", f"{ms['factors narrower than 128 in fp32']:.1f}") for ms in by_model.values()}
    references = sorted(ms["fp32 fused graph (reference)"] for model, ms in by_model.items() if "-0.5-" in model)
    pages = "\n".join(_pages().values())

    agreement = re.search(r"RankDyna's six default int8 graphs\s+on ([\d.]+)–([\d.]+)%", pages)
    assert agreement and (agreement[1], agreement[2]) == (f"{min(rankdyna):.1%}"[:-1], f"{max(rankdyna):.1%}"[:-1])
    assert len(rankdyna) == 6 and f"fp32 graph's class on {dense[0]:.1%} of MRPC dev" in pages
    stated = re.search(r"(\d+\.\d) → (\d+\.\d) and\s+(\d+\.\d) → (\d+\.\d) ms at 0\.5, (\d+\.\d) → (\d+\.\d) and "
                       r"(\d+\.\d) → (\d+\.\d) ms at 0\.25", pages)
    assert stated and {stated.group(i, i + 1) for i in (1, 3, 5, 7)} == pairs
    noise = re.search(r"took ([\d.]+) and ([\d.]+) ms, (\d+)% apart", pages)
    assert noise and (noise[1], noise[2]) == tuple(f"{ms:.1f}" for ms in references)
    assert int(noise[3]) == round(100 * (references[1] / references[0] - 1))
    # SST-2's int8 agreement is in no committed file: no page may state one.
    assert not re.search(r"[\d.]+–[\d.]+% on SST-2", pages)


def test_the_cpu_deployment_table_is_deploy_cpu_md():
    tasks = {"MRPC": "mrpc", "SST-2": "sst2"}
    committed = {}
    for _, header, body in _tables(open(os.path.join(RESULTS, "deploy_cpu.md"), encoding="utf-8").read()):
        for cells in body:
            committed[(cells[0], cells[1])] = cells
    rows = 0
    for path, text in _pages().items():
        for _, header, body in _tables(text):
            if header[:3] != ["task", "graph", "dev acc (MRPC F1)"]:
                continue
            for cells in body:
                row = committed[(tasks[cells[0]], cells[1])]
                metrics = re.findall(r"\d\.\d+", row[2])
                assert re.findall(r"\d\.\d+", cells[2]) == metrics, (path, cells[:2])
                assert cells[3:8] == row[3:8], (path, cells[:2])
                rows += 1
    assert rows == len(committed), "the CPU deployment table lost rows"


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


def test_the_readme_headline_table_is_the_cost_quality_summary():
    """Every cell of the README's GLUE table is a row of cost_quality.json (mean ± std over its seeds, the seeds
    named where they are not 42–44), and the row marked the default is the length `rankdyna compress` trains."""
    from peft_rankdyna.jobs.length import default_epochs

    summary = json.load(open(os.path.join(RESULTS, "cost_quality.json"), encoding="utf-8"))
    methods = {"dense fine-tuning (3 ep)": ("dense", 3.0), "dense fine-tuning (6 ep)": ("dense", 6.0),
               "SVD + FT (3 + 3 ep)": ("svd", 3.0), "FWSVD + FT (3 + 3 ep)": ("fwsvd", 3.0),
               "RankDyna (3 ep, the earlier default)": ("rankdyna", 3.0),
               "RankDyna (6 ep, the default)": ("rankdyna", float(default_epochs(replaces_two_rounds=True))),
               "RankDyna (9 ep)": ("rankdyna", 9.0)}
    tasks = {"MRPC accuracy": "mrpc", "CoLA Matthews": "cola", "SST-2 accuracy": "sst2"}
    (table,) = [body for _, header, body in _tables(_pages()["README.md"]) if header[2:] == list(tasks)]
    for cells in table:
        method, epochs = methods[_plain(cells[1])]
        budget = None if cells[0] == "—" else float(cells[0])
        for task, stated in zip(tasks.values(), map(_plain, cells[2:])):
            rows = [r for r in summary["rows"] if (r["task"], r["method"], r["budget"], r["setting"]["epochs"],
                                                   r["setting"]["learning_rate"]) == (task, method, budget, epochs, 5e-5)]
            if stated == "—":
                assert not rows, (cells[:2], task)
                continue
            (row,) = rows
            text = f"{row['mean']:.4f}" + ("" if row["std"] is None else f" ± {row['std']:.4f}")
            assert stated.startswith(text), (cells[:2], task, stated, text)
            if row["seeds"] != [42, 43, 44]:  # fewer seeds: said in the cell
                assert ", ".join(map(str, row["seeds"])) in stated, (cells[:2], task, stated)
    assert len(table) == 11
