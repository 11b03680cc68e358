"""Argument checks shared by every public entry point (pure: no ray, no torch, no numpy).

One rule everywhere: where a Python number is accepted, a numpy scalar of the same kind is
too (a budget grid from np.logspace, sizes from np.arange, an np.float32 learning rate),
and is handed back as a plain int or float (for JSON, for the workers); a bool is never a
number here (True is an int to Python, but `batch_size=True` is a slip, not a batch).

A failed check raises `error` (ValueError unless the caller's family has its own, e.g.
FitError) with the argument as it was called, `call(arg=value)`, what it must be, and how
to fix it.
"""

from __future__ import annotations

import math
import numbers


def _refuse(call: str, arg: str, value, need: str, fix: str, error: type) -> None:
    raise error(f"{call}({arg}={value!r}) must be {need}{': ' + fix if fix else '.'}")


def is_real(value) -> bool:
    """A real number: int, float or a numpy scalar of either; not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """An integer: int or a numpy integer; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float is no usable quantity
        return False


def is_positive_finite(value) -> bool:
    """A finite real number > 0 (numpy scalars included, bools not)."""
    return is_real(value) and _finite(value) and value > 0


def positive_number(value, call: str, arg: str, fix: str = "", *, error: type = ValueError,
                    above: float = 0.0) -> float:
    """A finite number > `above` (0 unless given), as a float."""
    if not (is_real(value) and _finite(value) and value > above):
        _refuse(call, arg, value, f"a finite number > {above:g}", fix, error)
    return float(value)


def non_negative_number(value, call: str, arg: str, fix: str = "", *, error: type = ValueError) -> float:
    """A finite number >= 0, as a float. (`value < 0` alone lets NaN through.)"""
    if not (is_real(value) and _finite(value) and value >= 0):
        _refuse(call, arg, value, "a finite number >= 0", fix, error)
    return float(value)


def fraction(value, call: str, arg: str, fix: str = "", *, open_low: bool = False, open_high: bool = False,
             error: type = ValueError) -> float:
    """A number in [0, 1] (open at either end on request), as a float: a probability,
    a share of a run, an interval level."""
    ok = is_real(value) and _finite(value) and (value > 0 if open_low else value >= 0) and (
        value < 1 if open_high else value <= 1)
    if not ok:
        span = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        _refuse(call, arg, value, f"a number in {span}", fix, error)
    return float(value)


def integer(value, call: str, arg: str, fix: str = "", *, minimum: int = 1, maximum: int | None = None,
            error: type = ValueError) -> int:
    """An int in [minimum, maximum] (maximum inclusive; None: no upper bound), as an int."""
    if not (is_int(value) and value >= minimum and (maximum is None or value <= maximum)):
        need = f"an int >= {minimum}" if maximum is None else f"an int from {minimum} to {maximum}"
        _refuse(call, arg, value, need, fix, error)
    return int(value)


def one_of(value, call: str, arg: str, options, fix: str = "", *, error: type = ValueError):
    """One of `options` (compared with ==; a bool is not 1)."""
    if isinstance(value, bool) or value not in options:
        _refuse(call, arg, value, f"one of {list(options)}", fix, error)
    return value


def distinct_sorted(values, call: str, arg: str, *, integers: bool, what: str, example: str,
                    repeat_note: str = "") -> list:
    """A non-empty collection of positive numbers (ints if `integers`), none twice; sorted,
    as plain Python numbers. `what` names one item's kind ("a positive int (...)"),
    `example` what to give when it is empty, `repeat_note` why a repeat is refused."""
    values = list(values)
    if not values:
        raise ValueError(f"{call}({arg}=[]): {arg} is empty: give {example}.")
    for v in values:
        if not ((is_int(v) and v >= 1) if integers else is_positive_finite(v)):
            raise ValueError(f"{call}({arg}=...): {v!r} is not {what}.")
    values = [int(v) if integers else float(v) for v in values]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{call}({arg}=...): {repeated} appear more than once{repeat_note}.")
    return sorted(values)
