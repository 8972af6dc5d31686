"""The source files a pipeline stage runs: the transitive closure of its entry modules over the
package's own imports, read with ``ast`` (nothing is imported, so the Snakemake rules call it at
parse time). Rules list these files as inputs, and dvc.yaml as deps, because Snakemake's code
trigger sees a rule's command line, not what the called modules import.

Followed: module-level and function-level (lazy) imports, relative imports, ``from pkg.a import
b`` where ``b`` is a submodule, the packages' ``__init__.py`` on each module's path (importing a
module runs them), and string literals ``"pkg.module:function"`` naming a module of the package
(the task registry's references, imported on use). Not followed: imports under ``if
TYPE_CHECKING:`` (they never run), modules of other distributions, and the strings of the modules
a caller names ``unfollowed`` (registries whose entries run one at a time: the caller adds the
modules of the entry a job runs, e.g. its run's architecture).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

REFERENCE = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*")  # "module:function"


def module_sources(entries: tuple[str, ...] | list[str], src: Path | str, unfollowed: tuple[str, ...] = ()) -> list[str]:
    """Sorted paths (``src``/pkg/...py, as ``src`` is given) of the files that ``entries`` (dotted
    module names, e.g. "copa.train.pretrain") run, through their imports within their top-level
    package. ``src`` is the folder holding the package (the repository's src/). The
    "module:function" strings of the modules in ``unfollowed`` are not followed (their imports are).

    Raises ValueError naming an entry, or an import inside the package, that is no module under ``src``.
    """
    return sorted({str(path) for entry in entries for path in _closure(entry, str(src), tuple(unfollowed))})


@lru_cache(maxsize=None)
def _closure(entry: str, src: str, unfollowed: tuple[str, ...]) -> frozenset[Path]:
    package = entry.split(".")[0]
    if _module_file(entry, src) is None:
        raise ValueError(f"entry module {entry!r} is not a module under {src}/ (a .py file or a package)")
    seen: set[str] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        pending += parents + list(_imports(name, package, src, False, name not in unfollowed))
    return frozenset(_module_file(name, src) for name in seen)


@lru_cache(maxsize=None)
def _module_file(name: str, src: str) -> Path | None:
    """The file of module ``name`` under ``src``: name.py or name/__init__.py; None if neither."""
    base = Path(src, *name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def direct_imports(name: str, src: Path | str, type_checking: bool = False) -> frozenset[str]:
    """The modules of its own top-level package that module ``name`` imports anywhere in its file or
    names as "module:function"; with ``type_checking``, also those under ``if TYPE_CHECKING:`` (for
    the layering test: a type-only import still ties two modules together)."""
    if _module_file(name, str(src)) is None:
        raise ValueError(f"module {name!r} is not a module under {src}/ (a .py file or a package)")
    return _imports(name, name.split(".")[0], str(src), type_checking, True)


def package_modules(package: str, src: Path | str) -> list[str]:
    """Every module of ``package`` under ``src``, dotted (a package by its own name)."""
    modules = []
    for path in sorted(Path(src, package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@lru_cache(maxsize=None)
def _imports(name: str, package: str, src: str, type_checking: bool, references: bool) -> frozenset[str]:
    """The modules of ``package`` that module ``name``'s source imports or, with ``references``,
    names as "module:function"."""
    path = _module_file(name, src)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(module: str, where: ast.AST) -> None:
        if module.split(".")[0] != package:
            return
        if _module_file(module, src) is None:
            raise ValueError(f"{path}:{where.lineno}: imports {module}, which is no module under {src}/")
        found.add(module)

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree) if type_checking else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package (a package's __init__ is its own)
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                if not parts:
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            add(base, node)
            for alias in node.names:  # `from pkg.a import b`: b may be a submodule
                if base.split(".")[0] == package and _module_file(f"{base}.{alias.name}", src) is not None:
                    found.add(f"{base}.{alias.name}")
        elif references and isinstance(node, ast.Constant) and isinstance(node.value, str):
            reference = REFERENCE.fullmatch(node.value)
            if reference and reference["module"].split(".")[0] == package and _module_file(reference["module"], src) is not None:
                found.add(reference["module"])
    return frozenset(found)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (its else branch runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack += [node.test, *node.orelse]
        else:
            stack += list(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
