"""The package's shape: no import circles, the fit and the report apart, small files."""

import ast
from pathlib import Path

import flops_fit

PACKAGE = Path(flops_fit.__file__).parent
FITTING_MAX_LINES = 300  # each module of the fit is one job
FITTING_MAX_FUNCTION_LINES = 60  # of code: a docstring does not count


def _modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name, path, modules):
    """Package modules that `name` imports anywhere in its text (top level or in a function)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    # a package's __init__ re-exports its modules; the modules importing their package's
    # names through it would be a circle, so those edges count too
    circles = sorted((a, b) for a in graph for b in graph[a] if a in graph.get(b, ()) and a < b)
    assert circles == []


def test_the_report_never_imports_the_fit():
    graph = _graph()
    assert not {m for m in graph["flops_fit.report"] if m.startswith("flops_fit.fitting")}


def test_the_graph_is_read_from_the_source():
    # the test above would pass on an empty graph: the edges it reads must be there
    graph = _graph()
    assert "flops_fit.fitting.api" in graph["flops_fit.fitting"]
    assert "flops_fit.contract" in graph["flops_fit.results"]


def test_every_module_of_the_fit_is_small():
    for path in sorted((PACKAGE / "fitting").glob("*.py")):
        lines = path.read_text().count("\n")
        assert lines < FITTING_MAX_LINES, f"{path.name}: {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                code = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                length = node.end_lineno - code[0].lineno + 1
                assert length <= FITTING_MAX_FUNCTION_LINES, f"{path.name}:{node.name}: {length} lines"
