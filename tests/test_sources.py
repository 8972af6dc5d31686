"""copa.sources: the files a stage runs, found from its entry modules' imports without importing them."""

import subprocess
import sys
from pathlib import Path

import pytest

from copa.sources import module_sources

REPO = Path(__file__).parents[1]


def write_tree(src: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


PACKAGE = {
    "pkg/__init__.py": "",
    "pkg/entry.py": "import os\nimport pkg.eager\nfrom pkg.sub import leaf\n\n\ndef run():\n    from . import lazy\n    return lazy\n",
    "pkg/eager.py": "from .helpers.deep import VALUE\n",
    "pkg/lazy.py": "TASKS = {'a': 'pkg.referenced:main', 'b': 'pkg.nowhere:main', 'c': 'other.module:main'}\n",
    "pkg/referenced.py": "",
    "pkg/helpers/__init__.py": "",
    "pkg/helpers/deep.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.typing_only import T\nVALUE = 1\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/leaf.py": "",
    "pkg/typing_only.py": "",
    "pkg/unrelated.py": "",
}


def test_closure_follows_imports_of_every_kind(tmp_path):
    src = write_tree(tmp_path / "src", PACKAGE)
    found = [Path(p).relative_to(src).as_posix() for p in module_sources(["pkg.entry"], src)]
    # module-level, relative (from a module and from a package), `from pkg.sub import leaf` (a
    # submodule), lazy (in a function), a registry's "module:function" string, the packages'
    # __init__.py; not what runs only for type checkers, a string naming no module, other packages
    assert found == ["pkg/__init__.py", "pkg/eager.py", "pkg/entry.py", "pkg/helpers/__init__.py", "pkg/helpers/deep.py", "pkg/lazy.py",
                     "pkg/referenced.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py"]



def test_the_strings_of_an_unfollowed_registry_are_left_to_the_caller(tmp_path):
    """A registry whose entries run one at a time (the architectures): its imports are followed, its
    "module:function" strings are not (the rules add the modules of the entry a job runs)."""
    src = write_tree(tmp_path / "src", PACKAGE)
    found = [Path(p).relative_to(src).as_posix() for p in module_sources(["pkg.entry"], src, unfollowed=("pkg.lazy",))]
    assert "pkg/lazy.py" in found and "pkg/referenced.py" not in found


def test_a_new_lazily_imported_module_is_a_source(tmp_path):
    before = write_tree(tmp_path / "before", PACKAGE)
    after = write_tree(tmp_path / "after", {**PACKAGE, "pkg/added.py": "",
                                            "pkg/eager.py": PACKAGE["pkg/eager.py"] + "\n\ndef later():\n    import pkg.added\n"})
    assert str(before / "pkg" / "added.py") not in module_sources(["pkg.entry"], before)
    assert str(after / "pkg" / "added.py") in module_sources(["pkg.entry"], after)


def test_paths_keep_the_form_src_is_given_in(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", PACKAGE)
    monkeypatch.chdir(tmp_path)
    assert module_sources(("pkg.referenced",), "src") == ["src/pkg/__init__.py", "src/pkg/referenced.py"]


@pytest.mark.parametrize("entry", ["pkg.missing", "pkg.sub.nothing"])
def test_an_unknown_entry_is_named(tmp_path, entry):
    src = write_tree(tmp_path / "src", PACKAGE)
    with pytest.raises(ValueError, match=rf"entry module '{entry}' is not a module under"):
        module_sources([entry], src)


def test_an_import_of_a_missing_module_names_the_file_and_line(tmp_path):
    src = write_tree(tmp_path / "src", {**PACKAGE, "pkg/eager.py": "X = 1\nfrom pkg.gone import thing\n"})
    with pytest.raises(ValueError, match=r"pkg/eager.py:2: imports pkg.gone, which is no module under"):
        module_sources(["pkg.entry"], src)


def test_reads_without_importing(tmp_path):
    """The rules call it at parse time: it must not run (or import) the modules it reads."""
    src = write_tree(tmp_path / "src", {**PACKAGE, "pkg/eager.py": "raise SystemExit('imported')\n"})
    assert str(src / "pkg" / "eager.py") in module_sources(["pkg.entry"], src)
    assert "pkg" not in sys.modules


def test_importing_it_is_light():
    """...and its import pulls in no torch (the rules import it when Snakemake parses them)."""
    code = "import sys, copa.sources; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    assert subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout == "[]\n"


def test_copa_pretraining_runs_the_models_and_the_engine():
    found = module_sources(["copa.train.pretrain"], REPO / "src")
    for name in ("models/vit.py", "train/engine.py", "__init__.py", "train/__init__.py"):
        assert str(REPO / "src" / "copa" / name) in found, name
    assert not [path for path in found if Path(path).is_relative_to(REPO / "src" / "copa" / "cli")]  # the CLI package
