"""flops_fit uses Ray's public API only (docs/architecture.md, "Ray facts the code relies on"): users bring clusters
whose Ray release is fixed by their image, and private modules and attributes change
between releases without notice.

The rule, checked on the source of every flops_fit/*.py:
- no import from a module path with a `_internal` or `_private` component;
- no `_name` attribute (dunders aside) read from a Ray object: a name bound by an import
  from `ray...`, or a name assigned from an expression that starts at such a name
  (`tuner = tune.Tuner(...)`; then `tuner._local_tuner` is flagged).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flops_fit"
PRIVATE_PARTS = ("_internal", "_private")


def _private_module(module: str) -> bool:
    return any(part in PRIVATE_PARTS or part.startswith(PRIVATE_PARTS) for part in module.split("."))


def _root_name(node):
    """The name an expression such as `a.b(c).d[0]` starts from, or None."""
    while True:
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Await):
            node = node.value
        else:
            return node.id if isinstance(node, ast.Name) else None


def private_ray_uses(source: str, filename: str = "<snippet>") -> list:
    """Violations of the rule in `source`, as 'file:line: what' strings."""
    tree = ast.parse(source, filename)
    found, ray_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _private_module(alias.name):
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
                if alias.name == "ray" or alias.name.startswith("ray."):
                    ray_names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [a.name for a in node.names]
            if _private_module(module) or any(_private_module(n) for n in names):
                found.append(f"{filename}:{node.lineno}: from {module} import {', '.join(names)}")
            if module == "ray" or module.startswith("ray."):
                ray_names.update(a.asname or a.name for a in node.names)
    # Names that hold Ray objects: assigned (anywhere in the file) from a Ray name's chain,
    # repeated until nothing new is found (b = a.x; c = b.y ...).
    while True:
        before = len(ray_names)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.withitem)):
                value = node.context_expr if isinstance(node, ast.withitem) else node.value
                targets = ([node.optional_vars] if isinstance(node, ast.withitem)
                           else node.targets if isinstance(node, ast.Assign) else [node.target])
                if value is not None and _root_name(value) in ray_names:
                    ray_names.update(t.id for t in targets if isinstance(t, ast.Name))
        if len(ray_names) == before:
            break
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if _root_name(node.value) in ray_names:
                found.append(f"{filename}:{node.lineno}: .{node.attr} of a Ray object")
    return found


def test_the_package_uses_only_public_ray_api():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) > 10, files  # the package itself, not an empty glob
    found = [v for f in files for v in private_ray_uses(f.read_text(), f.name)]
    assert not found, "\n".join(found)


def test_the_checker_flags_private_imports_and_attributes():
    bad = {
        "from ray.train.v2._internal.execution.controller import TrainController": "_internal",
        "import ray._private.services": "_private",
        "from ray._private import services": "_private",
        "from ray.train.v2 import _internal": "_internal",
        "import ray\nray._private.worker.global_worker": "._private",
        "from ray import tune\ntuner = tune.Tuner(f)\ntuner._local_tuner.get_run_config()": "._local_tuner",
        "import ray.train as rt\nc = rt.get_context()\nx = c.foo()\nx._inner": "._inner",
    }
    for snippet, what in bad.items():
        found = private_ray_uses(snippet)
        assert found and what in found[0], (snippet, found)


def test_the_checker_leaves_public_use_and_own_private_names_alone():
    fine = (
        "import ray\nfrom ray import tune\nray.__version__\ntune.Tuner(f).fit()",
        "class A:\n    def f(self):\n        return self._lock",
        "from . import results as R\nR._filesystem('x')",
        "import numpy as np\nnp.random._generator",
    )
    for snippet in fine:
        assert private_ray_uses(snippet) == [], snippet
