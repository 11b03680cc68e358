"""Do the two approaches agree on what users use: N_opt and the loss at a budget?

Each approach predicts N_opt and L_opt at the largest fitted budget and at a budget beyond
it. The difference of the two predictions (in ln) is compared with the combined spread of
their intervals, sqrt(h_iso^2 + h_par^2) for half-widths h in ln: for two independent
estimates with roughly normal errors this is the interval of their difference. Every
comparison is made at level 1 - (1 - level) / n (Bonferroni), so that the chance of a false
alarm over all of them stays below 1 - level (benchmarks/agreement_false_alarms.py counts
false alarms over simulated sweeps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREE, DISAGREE, NOT_JUDGED = "agree", "disagree", "not judged"
QUANTITIES = (("params", "N_opt"), ("loss", "loss"))  # prediction column, name shown


@dataclass(frozen=True)
class Comparison:
    """One quantity at one budget: both predictions (value, low, high) and the test."""

    quantity: str
    flops: float
    isoflop: tuple
    parametric: tuple
    log_difference: float  # ln(isoflop / parametric)
    allowed: float  # combined half-width in ln at the comparison's level
    agree: bool


@dataclass(frozen=True)
class Agreement:
    """The verdict (AGREE, DISAGREE, NOT_JUDGED, or "" when one approach ran) and its rows."""

    verdict: str = ""
    comparisons: tuple = ()
    level: float = 0.95

    def __bool__(self):
        return bool(self.verdict)

    def __str__(self):
        if not self.verdict:
            return ""
        if self.verdict == NOT_JUDGED:
            return "not judged: an approach has no interval (bootstrap=0 or too few budgets)"
        parts = [f"{c.quantity} at {c.flops:.3g} FLOPs {c.isoflop[0]:.4g} vs {c.parametric[0]:.4g} "
                 f"({math.expm1(c.log_difference):+.1%}, {'within' if c.agree else 'beyond'} "
                 f"{_spread_text(c.allowed)})" for c in self.comparisons]
        head = "agree" if self.verdict == AGREE else "DISAGREE"
        return (f"{head} (isoflop vs parametric; a difference beyond the combined {self.level:.0%} "
                f"intervals is a disagreement):\n    " + "\n    ".join(parts))


def _spread_text(log_spread):
    """A spread in ln as a percentage, or as a factor once it passes 2x."""
    return f"{math.expm1(log_spread):.1%}" if log_spread < math.log(2) else f"a factor {math.exp(log_spread):.3g}"


def compare(iso, par, flops, level) -> Agreement:
    """Compare the approaches' N_opt and L_opt at each budget of `flops` (FLOPs)."""
    if iso is None or par is None:
        return Agreement()
    flops = np.atleast_1d(np.asarray(flops, float))
    each = 1 - (1 - level) / (len(flops) * len(QUANTITIES))
    pi, pp = iso.predict(flops, each), par.predict(flops, each)
    rows = []
    for column, name in QUANTITIES:
        for j, c in enumerate(flops):
            vi, vp = (tuple(float(p[f"{column}{end}"].iloc[j]) for end in ("", "_low", "_high")) for p in (pi, pp))
            with np.errstate(divide="ignore", invalid="ignore"):
                diff = float(np.log(vi[0] / vp[0]))
                half = [(np.log(v[2]) - np.log(v[1])) / 2 for v in (vi, vp)]
            allowed = float(np.hypot(*half))
            if not (np.isfinite(allowed) and np.isfinite(diff)):
                return Agreement(NOT_JUDGED, (), level)
            rows.append(Comparison(name, float(c), vi, vp, diff, allowed, abs(diff) <= allowed))
    verdict = AGREE if all(r.agree for r in rows) else DISAGREE
    return Agreement(verdict, tuple(rows), level)
