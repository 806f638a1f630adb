"""The package's layout: the import rules between subpackages, module and function sizes, and the
README's Layout table, all read from the files by path (nothing is imported)."""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "s2d_jax"
SUBPACKAGES = ("model", "rollout", "learn", "grading", "distributed", "workflow", "data", "tools")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# What each subpackage may import from s2d_jax besides itself (DESIGN.md's rules).
ALLOWED = {
    "model": set(),
    "learn": {"model"},
    "rollout": {"model"},
    "grading": set(),
    "data": set(),
    "distributed": {"model", "learn"},
    "workflow": {"model", "learn", "rollout", "grading", "distributed", "data"},
    "tools": set(SUBPACKAGES),
}


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; use absolute s2d_jax.* imports")
            base = node.module or ""
            names.add(base)
            # `from s2d_jax.model import decoder` imports the module s2d_jax.model.decoder
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def subpackage_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def own_imports(path: Path) -> set[str]:
    """The s2d_jax subpackages (or top-level modules) that `path` imports."""
    out = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == "s2d_jax" and len(parts) > 1:
            out.add(parts[1])
    return out


def test_the_package_root_holds_only_main():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "main.py"], "modules belong in a subpackage"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(SUBPACKAGES)


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_rules(path):
    sub = subpackage_of(path)
    imports = own_imports(path) - {sub, "main"}
    if sub == "":  # main.py: the entry point drives the workflow and nothing else
        assert own_imports(path) <= {"workflow"}, own_imports(path)
        return
    assert "main" not in own_imports(path)
    assert imports <= ALLOWED[sub], f"{sub}/ may not import {sorted(imports - ALLOWED[sub])}"


def test_losses_import_nothing_of_the_package():
    assert own_imports(PACKAGE / "learn" / "losses.py") == set()


def test_the_grading_worker_imports_only_the_standard_library_sympy_and_math_verify():
    """It runs as a script in a sandboxed subprocess: it must not load the package (or JAX)."""
    roots = {name.split(".")[0] for name in imported_modules(PACKAGE / "grading" / "worker.py")}
    allowed = set(sys.stdlib_module_names) | {"sympy", "math_verify", "__future__"}
    assert roots <= allowed, sorted(roots - allowed)


def test_configs_import_only_configs_common():
    for path in sorted((ROOT / "configs").glob("*.py")):
        first_party = {
            name for name in imported_modules(path) if name.split(".")[0] in ("s2d_jax", "configs")
        }
        assert first_party <= {"configs", "configs.common"}, (path.name, first_party)


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: split it along a seam"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_FUNCTION_LINES, f"{path.name}:{node.name} has {lines} lines"


def test_the_readme_layout_table_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"[\w/]+\.py", section))
    for path in package_files():
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(PACKAGE)
        if rel.parent == Path("."):
            continue  # main.py, named in the prose
        assert str(rel) in listed, f"README Layout: add {rel}"
