"""A learning-rate search inside the sweep: each point trained at several multiples of its
rule's learning rate, the best one kept, and the optimal LR learned as a power law of N.

Pure math on small tables (never imports ray or torch): the sibling ids, the choice of a
point's best sibling, the collapse of a results table with siblings into one row per
point (`results.load_results` calls it), and the fit of lr_opt(N).

Why: one learning rate for every size measures the sizes it happens to suit, and biases
the N_opt exponent (Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal
Scaling of Language Models"). DeepSeek LLM (arXiv:2401.02954) and Step Law (Li et al.
2025, arXiv:2503.04715) fit the optimal LR as a power law; searching a few multiples of a
rule per point and fitting the winners does the same at the sweep's own scale.

Units: learning rates are AdamW peak rates; N in parameters, D in tokens, loss in the
results table's units (nats per token for text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import checks
from .contract import (DIVERGED_STATUS, ENDED_STATUSES, FAILED_STATUS, INCOMPLETE_STATUS, LR_NOT_BRACKETED,
                       OK_STATUS)

# A minimum inside the grid needs a multiplier on each side of the best one.
MIN_MULTIPLIERS = 3
# Sibling trial ids: the point's id, this separator, the multiplier (`:g`), e.g.
# "C1e+12-s4-lr0.25": stable (resume finds a sibling's own trial folder and record) and
# never a planned point's id (those end in "-s<size>" or the search's "-add").
SIBLING_SEPARATOR = "-lr"
# How a point's loss is chosen among its siblings: the lowest held-out loss of a trained
# sibling (a real run; a parabola's vertex would extrapolate the noise of three runs).
# The parabola in ln(lr) through the best sibling and its two neighbours gives `lr_opt`.
SELECTION = "lowest loss among the learning rates tried; lr_opt from a parabola in ln(lr) through the best three"
INTERVAL_LEVEL = 0.95  # the fitted exponent's bootstrap interval
BOOTSTRAP = 1000  # resamples of the searched points for that interval
MIN_POINTS_FOR_LAW = 3  # a line in (ln N, ln lr) with a residual


def check_lr_search(values, call: str = "run_sweep") -> tuple | None:
    """run_sweep's `lr_search` as sorted float multipliers, or None (no search).

    One error line names the argument and the fix, before any compute; the values given
    are not echoed.
    """
    if values is None:
        return None
    fix = (f"give at least {MIN_MULTIPLIERS} distinct finite multipliers > 0 of the rule's learning "
           "rate, e.g. lr_search=[0.25, 0.5, 1, 2, 4] (CLI: --lr-search 0.25 0.5 1 2 4)")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{call}(lr_search=...) must be a list of numbers: {fix}.")
    values = list(values)
    if len(values) < MIN_MULTIPLIERS:
        raise ValueError(f"{call}(lr_search=...) has {len(values)} multiplier(s): {fix}.")
    if not all(checks.is_positive_finite(v) for v in values):
        raise ValueError(f"{call}(lr_search=...) holds a value that is not a finite number > 0: {fix}.")
    floats = sorted(float(v) for v in values)
    # Ids carry the multiplier as `:g` (6 significant digits): two that print alike clash.
    if len({f"{v:g}" for v in floats}) < len(floats):
        raise ValueError(f"{call}(lr_search=...) repeats a multiplier (to 6 significant digits): {fix}.")
    return tuple(floats)


def sibling_id(point_id: str, multiplier: float) -> str:
    """The trial id of `point_id` trained at `multiplier` x its rule's learning rate."""
    return f"{point_id}{SIBLING_SEPARATOR}{multiplier:g}"


def point_of(sibling: str) -> str:
    """The point id a sibling id was made from (inverse of sibling_id)."""
    return sibling.rsplit(SIBLING_SEPARATOR, 1)[0]


@dataclass(frozen=True)
class Choice:
    """The verdict on one point's siblings.

    best: index (into the sorted multipliers) of the lowest finished loss, or None;
    lr_opt_multiplier: the parabola's vertex in ln(multiplier) through the best sibling
        and its two neighbours when both finished, else the best multiplier;
    bracketed: a sibling on each side of the best one is worse (a diverged one counts as
        worse); reason: why not.
    """

    best: int | None
    lr_opt_multiplier: float
    bracketed: bool
    reason: str


def choose(multipliers, losses, statuses) -> Choice:
    """Pick a point's best sibling. `multipliers` sorted ascending; `losses` held-out
    losses (NaN where none); `statuses` the siblings' statuses (ok, diverged, ...)."""
    m = np.asarray(multipliers, float)
    loss = np.array([l if s == OK_STATUS else (math.inf if s == DIVERGED_STATUS else math.nan)
                     for l, s in zip(np.asarray(losses, float), statuses)])
    finite = np.isfinite(loss)
    if not finite.any():
        return Choice(None, math.nan, False, "no learning rate finished with a loss")
    best = int(np.nanargmin(np.where(finite, loss, np.inf)))
    if best == 0 or best == len(m) - 1:
        edge = "smallest" if best == 0 else "largest"
        return Choice(best, float(m[best]), False,
                      f"the best learning rate is the {edge} multiplier tried ({m[best]:g}); widen lr_search")
    lo, hi = loss[best - 1], loss[best + 1]
    if np.isnan(lo) or np.isnan(hi):  # a neighbour failed: nothing says the best one is a minimum
        return Choice(best, float(m[best]), False, "a neighbouring learning rate did not finish")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return Choice(best, float(m[best]), True, "")
    x = np.log(m[best - 1:best + 2])
    c2, c1, _ = np.polyfit(x, [lo, loss[best], hi], 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else x[1]
    vertex = float(np.clip(vertex, x[0], x[2]))  # a parabola through a minimum has it inside
    return Choice(best, math.exp(vertex), True, "")


def collapse(raw: pd.DataFrame, keep_unbracketed: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw with `best_of_point`, `lr_opt`, `lr_bracketed` filled, one row per point).

    Rows with an `lr_multiplier` are siblings of the point (budget, size) they share; the
    point's row is its best sibling's with the point's id, `best_of_point` True, and a
    status that says whether the point can be fitted:
    - a sibling not finished (incomplete, failed): that status, the point waits or reruns;
    - no sibling with a loss: diverged;
    - best multiplier at the grid's edge: LR_NOT_BRACKETED (ok with keep_unbracketed);
    - otherwise ok.
    Rows without a multiplier pass through unchanged.
    """
    raw = raw.copy()
    searched = raw["lr_multiplier"].notna() if "lr_multiplier" in raw else pd.Series(False, index=raw.index)
    raw.loc[searched, "best_of_point"] = False
    out = []
    for i, row in raw.iterrows():
        if not searched[i]:
            out.append((i, row.to_dict()))
    for (budget, size), group in raw[searched].groupby(["budget", "size"], sort=False):
        group = group.sort_values("lr_multiplier")
        choice = choose(group["lr_multiplier"].astype(float), group["loss"].astype(float), list(group["status"]))
        first = group.index[0]
        if choice.best is None:
            row = group.iloc[0].to_dict()
            row["loss"] = math.nan
        else:
            best = group.index[choice.best]
            raw.loc[best, "best_of_point"] = True
            row = raw.loc[best].to_dict()
            first = best
            # The rule's LR at this point, from any sibling that recorded the LR it trained.
            rules = [float(l) / float(m) for l, m in zip(group["lr"], group["lr_multiplier"]) if _number(l)]
            rule_lr = rules[0] if rules else math.nan
            raw.loc[group.index, "lr_opt"] = rule_lr * choice.lr_opt_multiplier
            raw.loc[group.index, "lr_bracketed"] = choice.bracketed
            row.update(lr_opt=rule_lr * choice.lr_opt_multiplier, lr_bracketed=choice.bracketed)
        row["point_id"] = point_of(str(group.iloc[0]["point_id"]))
        statuses = set(group["status"])
        waiting = [s for s in (INCOMPLETE_STATUS, FAILED_STATUS) if s in statuses]
        tried = ", ".join(f"{m:g}" for m in group["lr_multiplier"])
        if waiting:
            n = int(group["status"].isin(ENDED_STATUSES).sum())
            row.update(status=waiting[0], loss=math.nan,
                       error=f"{n} of {len(group)} learning rates finished (multipliers {tried})")
        elif choice.best is None:
            row.update(status=DIVERGED_STATUS, error=f"every learning rate diverged (multipliers {tried})")
        elif not choice.bracketed and not keep_unbracketed:
            row.update(status=LR_NOT_BRACKETED, error=f"LR not bracketed: {choice.reason}")
        else:
            row.update(status="ok", error="" if choice.bracketed else f"LR not bracketed (kept): {choice.reason}")
        row["best_of_point"] = True
        out.append((first, row))
    out.sort(key=lambda kv: list(raw.index).index(kv[0]))
    points = pd.DataFrame([r for _, r in out], columns=raw.columns)
    return raw, points.reset_index(drop=True)


def _number(value) -> bool:
    return checks.is_real(value) and math.isfinite(value)


@dataclass(frozen=True)
class LRLaw:
    """lr_opt = coefficient * N^-exponent (* D^tokens_exponent), fitted by least squares in
    logs through the searched points whose LR was bracketed.

    exponent_interval: (low, high) of g from a bootstrap over the points; rows: how many.
    """

    coefficient: float
    exponent: float
    exponent_interval: tuple
    tokens_exponent: float
    rows: int

    def __call__(self, params, tokens=1.0):
        return self.coefficient * np.asarray(params, float) ** -self.exponent * np.asarray(tokens, float) ** self.tokens_exponent

    def rule(self):
        """This law as a Task rule (flops_fit.hyperparameters.PowerLaw)."""
        from .hyperparameters import PowerLaw

        return PowerLaw(self.coefficient, self.exponent, "N", self.tokens_exponent)

    def describe(self) -> str:
        lo, hi = self.exponent_interval
        d = f" D^{self.tokens_exponent:.3f}" if self.tokens_exponent else ""
        return (f"lr_opt = {self.coefficient:.3g} N^{-self.exponent:.3f}{d}  "
                f"(g in [{lo:.3f}, {hi:.3f}], {INTERVAL_LEVEL:.0%}; {self.rows} points)")


def fit_lr_law(points: pd.DataFrame, with_tokens: bool = False, seed: int = 0) -> LRLaw:
    """Fit lr_opt(N) (and of D with `with_tokens`, which needs at least two budgets: within
    one budget D falls as N rises, so N and D are not separable there) to a table with one
    row per point (columns params, tokens, lr_opt, lr_bracketed, status).

    Raises ValueError when fewer than MIN_POINTS_FOR_LAW bracketed points have an lr_opt.
    """
    ok = points[(points["status"] == "ok") & points["lr_bracketed"].fillna(False).astype(bool)]
    ok = ok[np.isfinite(ok["lr_opt"].astype(float)) & (ok["lr_opt"].astype(float) > 0)]
    if len(ok) < MIN_POINTS_FOR_LAW:
        raise ValueError(f"fit_lr_law: {len(ok)} searched point(s) with a bracketed learning rate; "
                         f"a power law needs {MIN_POINTS_FOR_LAW}: widen lr_search or search more points.")
    log_n = np.log(ok["params"].to_numpy(float))
    log_d = np.log(ok["tokens"].to_numpy(float))
    log_lr = np.log(ok["lr_opt"].to_numpy(float))
    if with_tokens and ok["budget"].nunique() < 2:
        raise ValueError("fit_lr_law(with_tokens=True) needs searched points at two budgets or more.")

    def solve(idx):
        cols = [np.ones(idx.size), -log_n[idx]] + ([log_d[idx]] if with_tokens else [])
        coef, *_ = np.linalg.lstsq(np.column_stack(cols), log_lr[idx], rcond=None)
        return coef

    coef = solve(np.arange(len(ok)))
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(ok), len(ok))
        if np.unique(log_n[idx]).size >= 2:  # a resample of one size has no slope
            slopes.append(solve(idx)[1])
    tail = (1 - INTERVAL_LEVEL) / 2 * 100
    interval = tuple(float(x) for x in np.percentile(slopes, [tail, 100 - tail])) if slopes else (math.nan, math.nan)
    return LRLaw(float(math.exp(coef[0])), float(coef[1]), interval,
                 float(coef[2]) if with_tokens else 0.0, len(ok))
