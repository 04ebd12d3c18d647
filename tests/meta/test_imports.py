"""Imports point one way: no module of the package (or of the scripts) imports itself back
through others. Imports are read from the source with ast, wherever they stand: an import
inside a function counts as much as one at the top (it is the same dependency, only later).
"""

from __future__ import annotations

import ast
import pathlib

import pytest
from helpers import REPO_ROOT

ROOT = pathlib.Path(REPO_ROOT)
PACKAGE = "numpy_gpt2"


def module_names(directory: pathlib.Path, package: str | None) -> dict[str, pathlib.Path]:
    """{importable name: file} for the .py files of directory: "numpy_gpt2.layers" and
    "numpy_gpt2" (its __init__) for the package, subpackages too ("numpy_gpt2.io.formats",
    "numpy_gpt2.io.formats.llmc"), bare names ("bench") for a script folder."""
    names = {}
    for path in sorted(directory.glob("*.py")):
        names[path_name(path, package)] = path
    if package is not None:
        for sub in sorted(d for d in directory.iterdir() if (d / "__init__.py").is_file()):
            names.update(module_names(sub, f"{package}.{sub.name}"))
    return names


def imported(path: pathlib.Path, package: str | None, known) -> set[str]:
    """The names in `known` that the file imports anywhere (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..x import y: relative to the file's package
                parts = package.split(".")
                here = ".".join(parts[:len(parts) - (node.level - 1)])
                base = ".".join(filter(None, [here, node.module]))
            else:
                base = node.module
            # "from numpy_gpt2 import layers" imports the module numpy_gpt2.layers
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for name in targets:
            while name and name not in known:  # numpy_gpt2.x.y -> numpy_gpt2.x -> ...
                name = name.rpartition(".")[0]
            if name and name != path_name(path, package):
                found.add(name)
    return found


def path_name(path: pathlib.Path, package: str | None) -> str:
    if package is None:
        return path.stem
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def import_graph(directory: pathlib.Path, package: str | None) -> dict[str, set[str]]:
    names = module_names(directory, package)
    return {name: imported(path, name if path.stem == "__init__" else name.rpartition(".")[0],
                           names) if package else imported(path, None, names)
            for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, in sorted order)."""
    state, stack = {}, []  # state: 1 = on the current path, 2 = finished

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_package_has_no_import_cycle():
    graph = import_graph(ROOT / PACKAGE, PACKAGE)
    assert f"{PACKAGE}.model" in graph and f"{PACKAGE}.layers" in graph[f"{PACKAGE}.model"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


SCRIPT_FOLDERS = [d for d in ("scripts", "benchmarks", "examples") if (ROOT / d).is_dir()]


@pytest.mark.parametrize("folder", SCRIPT_FOLDERS)
def test_scripts_have_no_import_cycle(folder):
    graph = import_graph(ROOT / folder, None)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in {folder}/: " + " -> ".join(cycle)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    """The check itself: a cycle closed by an import inside a function, a relative import
    and an absolute one are all seen."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b.g()\n")
    (pkg / "b.py").write_text("def g():\n    from pkg.c import h\n    return h()\n")
    (pkg / "c.py").write_text("import numpy\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert find_cycle(graph) is None
    (pkg / "c.py").write_text("def h():\n    from .a import f\n    return f\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    # a subpackage: its relative imports are resolved against it, and its cycles are found
    (pkg / "c.py").write_text("import numpy\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("from ..c import h\nfrom .e import k\n")
    (pkg / "sub" / "e.py").write_text("k = 1\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.sub.d"] == {"pkg.c", "pkg.sub.e"} and find_cycle(graph) is None
    (pkg / "c.py").write_text("from pkg.sub.d import k\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.c", "pkg.sub.d", "pkg.c"]


def test_the_library_never_names_a_command_line_flag():
    """Outside numpy_gpt2/cli, no text the code produces (exception messages, warnings,
    strings it returns or writes) names a flag (`--model`, `--block-size`): the library's
    errors name arguments, and the commands word them as their flags. Docstrings and
    comments may mention the commands."""
    import re
    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        if (ROOT / PACKAGE / "cli") in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                           ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and flag.search(node.value)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:80]}")
    assert not found, "\n".join(found)
