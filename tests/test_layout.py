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


PACKAGE_MAX_LINES = 450  # a module one can hold in mind (the fit's own are smaller still)
PACKAGE_MAX_FUNCTION_LINES = 80  # a function read on one screen, docstring included
URI_MODULE = "storage.py"  # the one module that tells object-store URIs from local paths


def _sources():
    return sorted((path, path.read_text()) for path in PACKAGE.rglob("*.py"))


def _private_imports(text: str) -> list:
    """`from <package module> import _name` and `<package module alias>._name` in `text`."""
    tree = ast.parse(text)
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("flops_fit")):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name.startswith("flops_fit"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_private_import_check_finds_both_forms():
    assert len(_private_imports("from .plan import _hidden\n")) == 1
    assert len(_private_imports("from flops_fit import plan\nplan._hidden()\n")) == 1
    assert _private_imports("from .plan import shown\nimport os\nos._exit\n") == []


def test_no_module_imports_a_private_name_of_another():
    found = [f"{path.relative_to(PACKAGE)}:{hit}" for path, text in _sources() for hit in _private_imports(text)]
    assert found == []


def test_every_module_and_function_of_the_package_is_small():
    too_long = []
    for path, text in _sources():
        lines = text.count("\n")
        if lines > PACKAGE_MAX_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > PACKAGE_MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.name}: {length} lines")
    assert too_long == []
    assert len(_sources()) > 30  # the package was read


def test_only_the_storage_module_tells_uris_from_paths():
    tellers = sorted(str(path.relative_to(PACKAGE)) for path, text in _sources()
                     if '"://"' in text or "'://'" in text)
    assert tellers == [URI_MODULE]


def _renamed_imports(text: str) -> list:
    """Lines where a flops_fit module is imported under another name (`... import results as R`)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("flops_fit")):
            found += [f"{node.lineno}: {a.name} as {a.asname}" for a in node.names
                      if a.asname and a.asname != a.name]
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: {a.name} as {a.asname}" for a in node.names
                      if a.asname and a.name.startswith("flops_fit.") and a.asname != a.name.rsplit(".", 1)[1]]
    return found


def test_the_renamed_import_check_finds_each_form():
    assert len(_renamed_imports("from flops_fit import results as R\n")) == 1
    assert len(_renamed_imports("from . import hyperparameters as H\n")) == 1
    assert len(_renamed_imports("import flops_fit.results as R\n")) == 1
    assert _renamed_imports("import flops_fit as ff\nimport flops_fit.fitting as fitting\n"
                            "import torch.nn.functional as F\n") == []


def test_flops_fit_modules_are_read_under_their_own_names():
    # a one-letter alias hides which module a name comes from (F was also torch's functional)
    repo = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *(repo / "tests").rglob("*.py"), *(repo / "benchmarks").glob("*.py"),
             *(repo / "examples").glob("*.py")]
    found = [f"{path.relative_to(repo)}:{hit}" for path in files for hit in _renamed_imports(path.read_text())]
    assert found == []
    assert len(files) > 60  # the sources were read
