"""The layout the project keeps: a short train.py, short functions, no import cycle in the package, and tests and
benchmarks that reach the package as users do (not through train.py or an edited sys.path)."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "msemoboost"


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def relative_imports(path: Path) -> set[str]:
    """The sibling modules `path` imports (`from .x import` and `from . import x`), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


def test_train_py_is_a_short_script_and_no_function_is_over_80_lines():
    assert len((REPO / "train.py").read_text().splitlines()) <= 450
    long = [f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
            for path in [*sorted(PACKAGE.glob("*.py")), REPO / "train.py"]
            for name, line, length in functions(path) if length > 80]
    assert long == []


def test_the_package_has_no_import_cycle():
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    graph = {name: relative_imports(path) & set(modules) for name, path in modules.items()}
    cycles = set()

    def visit(module: str, path: list[str]) -> None:
        for imported in graph[module]:
            if imported in path:
                cycles.add(" -> ".join(path[path.index(imported):] + [imported]))
            else:
                visit(imported, path + [imported])

    for module in graph:
        visit(module, [module])
    assert cycles == set()


def test_tests_and_benchmarks_reach_the_package_as_users_do():
    offenders = []
    for path in [*sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "benchmarks").glob("*.py"))]:
        if path == Path(__file__):
            continue
        text = path.read_text()
        if re.search(r"^\s*(import train\b|from train import)", text, flags=re.MULTILINE):
            offenders.append(f"{path.name}: imports train.py")
        for inserted in re.findall(r"sys\.path\.insert\(0, ([^)]*)\)", text):
            if "benchmarks" not in inserted:  # a benchmark's sibling modules are not package code
                offenders.append(f"{path.name}: sys.path.insert(0, {inserted})")
    assert offenders == []
