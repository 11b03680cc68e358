"""Safe column expressions for `--map` / `--where` (and `fit(columns=..., where=...)`).

Mapping strings travel in shared configs and scripts, so they are data, never code: an
expression is parsed with `ast` and only the node types below are accepted, then it is
evaluated here, node by node, on the table's columns. Nothing reaches `eval`, pandas'
python engine, attribute lookup or imports.

Allowed:
- column names (a name with spaces or symbols in backticks: `Model Size`), numbers,
  strings, True / False, and lists or tuples of those (for `isin` and `in`);
- arithmetic + - * / // % ** and unary -, comparisons == != < <= > >= (chained too),
  `in` / `not in` a list, boolean logic and / or / not and & | ~ (element-wise);
- the functions in FUNCTIONS (log, log10, log2, exp, sqrt, abs) and the methods in
  METHODS: `col.isin([...])`, `col.str.contains("...")` (plain substring, no regex),
  `col.str.startswith("...")`, `col.str.endswith("...")`, `col.str.lower()`,
  `col.str.upper()`.
Everything else (attributes, subscripts, other calls, lambdas, comprehensions, `@`
references, dunder names) is refused with a one-line message naming the construct.
"""

from __future__ import annotations

import ast
import operator
import re

import numpy as np

FUNCTIONS = {"log": np.log, "log10": np.log10, "log2": np.log2, "exp": np.exp,
             "sqrt": np.sqrt, "abs": np.abs}
# method name -> how it is applied to a pandas Series; `str.*` take one string literal
STR_METHODS = ("contains", "startswith", "endswith", "lower", "upper")
METHODS = ("isin", *(f"str.{m}" for m in STR_METHODS))
# Longest expression accepted: mappings are one-liners; this bounds parse time and depth.
MAX_EXPRESSION_CHARS = 2000

ALLOWED_SUMMARY = ("allowed: column names (`with spaces` in backticks), numbers, strings, "
                   "+ - * / // % **, comparisons, and/or/not, & | ~, "
                   f"{', '.join(FUNCTIONS)}(x), x.isin([...]), "
                   "x.str.contains/startswith/endswith(\"...\"), x.str.lower()/upper()")

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.BitAnd: operator.and_, ast.BitOr: operator.or_}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_BACKTICK = re.compile(r"`([^`]*)`")
_STRING = re.compile(r"""("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""")


class ExpressionError(ValueError):
    """An expression uses something outside the allowed subset, or a column it names is missing."""


def _refuse(what):
    raise ExpressionError(f"{what} is not allowed ({ALLOWED_SUMMARY})")


def parse(expression: str, columns) -> tuple[ast.Expression, dict]:
    """Check `expression` against the allowed subset; return (tree, placeholder -> column).

    Backtick-quoted names become placeholder identifiers before parsing. Raises
    ExpressionError without evaluating anything.
    """
    if not isinstance(expression, str):
        raise ExpressionError(f"expected a string expression, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    names = {}

    def sub(match):
        key = f"bq{len(names)}_{abs(hash(match.group(1))) % 10**8}"
        names[key] = match.group(1)
        return key

    text = _BACKTICK.sub(sub, expression)
    if "@" in _STRING.sub("", text):
        raise ExpressionError("an '@' reference to a Python variable is not allowed "
                              f"({ALLOWED_SUMMARY})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"syntax error ({err.msg})") from None
    _check(tree.body)
    return tree, names


def _check(node):
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, bool)) or node.value is Ellipsis:
            _refuse(f"the constant {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            _refuse(f"the name {node.id!r} (names starting with '_')")
    elif isinstance(node, (ast.List, ast.Tuple)):
        for elt in node.elts:
            if not isinstance(elt, ast.Constant):
                _refuse("a list of anything but literals")
            _check(elt)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)):
            _refuse(f"the operator {type(node.op).__name__}")
        _check(node.operand)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            _refuse(f"the operator {type(node.op).__name__}")
        _check(node.left)
        _check(node.right)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE and not isinstance(op, (ast.In, ast.NotIn)):
                _refuse(f"the comparison {type(op).__name__}")
        _check(node.left)
        for c in node.comparators:
            _check(c)
    elif isinstance(node, ast.Call):
        _check_call(node)
    elif isinstance(node, ast.Attribute):
        _refuse(f"the attribute access '.{node.attr}' (only the listed methods may be called)")
    elif isinstance(node, ast.Subscript):
        _refuse("a subscript ([...])")
    elif isinstance(node, ast.Lambda):
        _refuse("lambda")
    else:
        _refuse(f"the construct {type(node).__name__}")


def _method_of(func):
    """(receiver node, 'isin' | 'str.contains' | ...) for an allowed method call, else None."""
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr == "isin":
        return func.value, "isin"
    inner = func.value
    if (func.attr in STR_METHODS and isinstance(inner, ast.Attribute) and inner.attr == "str"):
        return inner.value, f"str.{func.attr}"
    return None


def _check_call(node):
    if node.keywords:
        _refuse("a keyword argument")
    if isinstance(node.func, ast.Name):
        if node.func.id not in FUNCTIONS:
            _refuse(f"calling {node.func.id!r}")
        if len(node.args) != 1:
            raise ExpressionError(f"{node.func.id}() takes exactly one argument")
        _check(node.args[0])
        return
    method = _method_of(node.func)
    if method is None:
        if isinstance(node.func, ast.Attribute):
            _refuse(f"calling the method '.{node.func.attr}'")
        _refuse("calling anything but the listed functions and methods")
    receiver, name = method
    _check(receiver)
    if name == "isin":
        if len(node.args) != 1 or not isinstance(node.args[0], (ast.List, ast.Tuple)):
            raise ExpressionError("isin() takes one list of literals, e.g. x.isin([1, 2])")
        _check(node.args[0])
    elif name in ("str.lower", "str.upper"):
        if node.args:
            raise ExpressionError(f"{name}() takes no arguments")
    else:
        if len(node.args) != 1 or not (isinstance(node.args[0], ast.Constant)
                                       and isinstance(node.args[0].value, str)):
            raise ExpressionError(f"{name}() takes one string literal, e.g. x.{name}(\"abc\")")


def evaluate(expression: str, frame):
    """Value of `expression` on DataFrame `frame`: a Series (or a scalar for a literal).

    Raises ExpressionError for anything outside the allowed subset or an unknown column.
    """
    tree, names = parse(expression, frame.columns)
    with np.errstate(all="ignore"):
        try:
            return _eval(tree.body, frame, names)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as err:
            if isinstance(err, ExpressionError):
                raise
            # e.g. arithmetic on a text column: the expression does not fit these columns
            raise ExpressionError(f"cannot be evaluated on these columns ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _elementwise_not(v):
    if isinstance(v, (bool, np.bool_)):
        return not v
    return ~v.astype(bool)


def _eval(node, frame, names):
    import pandas as pd

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        column = names.get(node.id, node.id)
        if column in frame.columns:
            return frame[column]
        if node.id in ("True", "False"):
            return node.id == "True"
        raise ExpressionError(f"unknown column {column!r}; columns present: {list(frame.columns)}")
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, frame, names)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return +v
        return _elementwise_not(v)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, frame, names), _eval(node.right, frame, names))
    if isinstance(node, ast.BoolOp):
        # Element-wise, as in pandas' query: `a and b` on columns means a & b.
        values = [_eval(v, frame, names) for v in node.values]
        out = values[0]
        for v in values[1:]:
            out = (out & v) if isinstance(node.op, ast.And) else (out | v)
        return out
    if isinstance(node, ast.Compare):
        left = _eval(node.left, frame, names)
        result = None
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, frame, names)
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, list):
                    raise ExpressionError("'in' needs a list of literals on the right, e.g. x in [1, 2]")
                part = pd.Series(left).isin(right) if not np.isscalar(left) else left in right
                if isinstance(op, ast.NotIn):
                    part = _elementwise_not(part)
            else:
                part = _COMPARE[type(op)](left, right)
            result = part if result is None else (result & part)
            left = right
        return result
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return FUNCTIONS[node.func.id](_eval(node.args[0], frame, names))
        receiver, name = _method_of(node.func)
        value = _eval(receiver, frame, names)
        if not isinstance(value, pd.Series):
            raise ExpressionError(f"{name}() needs a column on its left")
        if name == "isin":
            return value.isin(_eval(node.args[0], frame, names))
        text = value.astype(str).str
        if name == "str.lower":
            return text.lower()
        if name == "str.upper":
            return text.upper()
        pattern = node.args[0].value
        if name == "str.contains":
            return text.contains(pattern, regex=False)
        return getattr(text, name[len("str."):])(pattern)
    raise ExpressionError(f"the construct {type(node).__name__} is not allowed")  # unreachable after parse
