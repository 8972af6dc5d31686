"""The package's imports run one way through its layers, with no cycles (STYLE.md 12).

Walks every module under ``src/copa`` (or the ``src`` folder named by ``COPA_SRC``, e.g. an old
checkout) with ``ast`` (``copa.sources``, the reader the Snakemake rules use), counting every import: module level, inside functions (lazy), under ``if
TYPE_CHECKING:``, and string references ``"copa.x:function"`` that are imported on use (the task
registry's).  Relative imports are resolved against the importing module, and ``from copa.x import
y`` is an import of the submodule ``copa.x.y`` when ``y`` is one.  A shared piece belongs in the
lowest layer that uses it; a lazy import or a string does not make an upward import acceptable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from copa.sources import direct_imports, package_modules

# The one place the layer order is decided, lowest first.  A module may import its own layer and
# any layer before it, never one after it.  Each layer names the modules and packages in it; a
# module takes the layer of the longest name that contains it ("copa", the package root, is its
# __init__ only, so a new top-level module or package has no layer until it is placed here).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Typed parameters, the package root, the run layout (every output path), the import-graph
    # reader the rules call and the code's provenance: everything may read them, and they read nothing of copa.
    ("config", ("copa", "copa.config", "copa.run_layout", "copa.sources", "copa.provenance")),
    # Records, synthetic worlds, tokeniser, transforms: plain data, no networks, no drawing.
    ("data", ("copa.data",)),
    # nn.Modules and their losses (dual- and single-stream), built from tensors, not from runs.
    ("models", ("copa.models",)),
    # Builders from params, the engine and the training runs that drive the models on the data.
    ("train", ("copa.train",)),
    # Metrics and instruments over trained models; a task may use them, never the reverse.
    ("eval", ("copa.eval",)),
    # Fine-tuning tasks (VQA, retrieval, captioning, grounding): train + eval for one benchmark.
    ("tasks", ("copa.tasks",)),
    # Tables, figures and the README from the runs' results (a figure may rerun a task's inference).
    ("report", ("copa.report",)),
    # The command line (a package of subcommands by stage), the thin adapter that binds paths and calls all of the above.
    ("cli", ("copa.cli", "copa.__main__")),
)
LAYER_INDEX = {name: i for i, (name, _) in enumerate(LAYERS)}

SRC = Path(os.environ.get("COPA_SRC", Path(__file__).resolve().parents[1] / "src"))


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the copa modules it imports (the rules' reader, ``copa.sources``, here also counting
    imports under TYPE_CHECKING: a type-only import still ties two modules together)."""
    return {name: set(direct_imports(name, src, type_checking=True)) - {name} for name in package_modules("copa", src)}


def layer_of(module: str) -> str | None:
    """The layer of the longest prefix of ``module`` that LAYERS places, or None when none does."""
    best: tuple[int, str] | None = None
    for layer, roots in LAYERS:
        for root in roots:
            if root == "copa":
                matches = module == "copa"
            else:
                matches = module == root or module.startswith(root + ".")
            if matches and (best is None or len(root) > best[0]):
                best = (len(root), layer)
    return best[1] if best else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = import_graph(SRC)
    assert "copa.cli" in found, f"no copa package under {SRC} (set COPA_SRC to a src/ folder)"
    return found


def test_every_module_has_a_layer(graph):
    unplaced = sorted(module for module in graph if layer_of(module) is None)
    assert not unplaced, f"modules that no layer of LAYERS places (add them or their package there): {unplaced}"


def test_no_import_to_a_layer_on_the_right(graph):
    upward = []
    for importer, imported_set in sorted(graph.items()):
        for imported in sorted(imported_set):
            low, high = layer_of(importer), layer_of(imported)
            if low is not None and high is not None and LAYER_INDEX[high] > LAYER_INDEX[low]:
                upward.append(f"{importer} ({low}) imports {imported} ({high})")
    assert not upward, "imports to a layer on the right:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles between modules:\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


def test_the_walk_sees_lazy_typing_relative_and_submodule_imports(tmp_path):
    """The walk counts the imports that are easy to miss, so the checks above can fail."""
    pkg = tmp_path / "copa"
    (pkg / "data").mkdir(parents=True)
    (pkg / "report").mkdir()
    for init in (pkg / "__init__.py", pkg / "data" / "__init__.py", pkg / "report" / "__init__.py"):
        init.write_text("")
    (pkg / "config.py").write_text("")
    (pkg / "report" / "figures.py").write_text("")
    (pkg / "data" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from copa.data import b\n"
        "def draw():\n    from ..report import figures\n"
    )
    (pkg / "data" / "b.py").write_text("from . import a\nimport copa.config\nPLOT = 'copa.report.figures:plot'\n")
    found = import_graph(tmp_path)
    assert found["copa.data.a"] == {"copa.data", "copa.data.b", "copa.report", "copa.report.figures"}
    assert found["copa.data.b"] == {"copa.data", "copa.data.a", "copa.config", "copa.report.figures"}
    assert cycles(found) == [["copa.data.a", "copa.data.b"]]
    assert layer_of("copa.report.figures") == "report" and layer_of("copa.single_stream.x") is None


# Modules that start without torch, transformers or timm (seconds to import here, ~10 with all three):
# the CLI, which every `copa` process (a Snakemake job each) imports, torch only where a command needs it (the
# errors it reports in one line live in torch-free modules, copa.config.errors.UserError); and the report's
# record readers, which read records, never models.
TORCH_FREE = {"cli": ["copa.cli"],
              "report-readers": ["copa.report.tables", "copa.report.claims", "copa.report.targets", "copa.report.instruments"]}


@pytest.mark.parametrize("modules", list(TORCH_FREE.values()), ids=list(TORCH_FREE))
def test_starts_without_torch(modules):
    import subprocess
    import sys

    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_model_commands_load_the_libraries_frozen_and_the_others_none(tmp_path):
    """`copa`'s model-building subcommands import torch, timm and transformers with the garbage collector
    off and freeze them (copa.cli.common.load_model_libraries); a data command imports none; a
    process that had torch already (main called from Python after its own imports) freezes nothing."""
    import subprocess
    import sys

    from conftest import PARAMS_DIR

    options = f"'--profile', 'fixture', '--params-dir', {str(PARAMS_DIR)!r}"
    code = ("import gc, sys, copa.cli\n"
            "from copa.cli.common import load_model_libraries\n"
            f"copa.cli.main([{options}, 'params'])\n"
            "light = ('torch' in sys.modules, gc.get_freeze_count())\n"
            "full = []  # full collections before the freeze: none while the libraries load\n"
            "gc.callbacks.append(lambda phase, info: full.append(1) if phase == 'start' and info['generation'] == 2 and not gc.get_freeze_count() else None)\n"
            f"status = copa.cli.main([{options}, 'finetune', '--task', 'vqa', '--pretrained', 'no-such-run', '--out', 'out'])\n"
            "frozen = gc.get_freeze_count()\n"
            "load_model_libraries()\n"
            "print(light, status, gc.isenabled(), frozen > 100_000, gc.get_freeze_count() == frozen, len(full))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert (done.stdout.splitlines() or [""])[-1] == "(False, 0) 2 True True True 0", done.stdout[-2000:] + done.stderr[-2000:]
    assert "no-such-run" in done.stderr  # the fine-tune ran after the libraries loaded, and stopped at its missing run
