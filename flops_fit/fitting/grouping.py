"""IsoFLOP budgets of the fitted rows: a budget column, or groups of rows whose FLOPs agree.

prepare.py reads and validates the rows; this module decides which rows form one IsoFLOP
profile and warns when a budget column or a FLOP group looks wrong."""

from __future__ import annotations

import numpy as np

# When the table has no `budget` column, points whose FLOPs agree within this relative
# tolerance form one IsoFLOP group. Planned sweeps hit their budget to well under 1%;
# 5% still separates budgets that are a factor 1.5 or more apart.
BUDGET_RTOL = 0.05
# A budget column more than this factor away from the rows' FLOPs is in other units.
BUDGET_FLOPS_MAX_RATIO = 1.5
# Values of a budget column within this relative distance are one budget (float noise).
BUDGET_COLUMN_RTOL = 1e-6
# A FLOP group (no budget column) whose FLOPs span more than this is not one budget.
GROUP_SPAN_WARN = 0.05


def budgets(rows, pts, fitted, budget_rtol):
    """Each point's IsoFLOP budget: the budget column, or FLOP groups within budget_rtol."""
    if "budget" in rows.present:
        given = rows.frame.loc[fitted, "budget"].astype(float).to_numpy()
        ratio = given / pts["flops"].to_numpy()
        off = (ratio > BUDGET_FLOPS_MAX_RATIO) | (ratio < 1 / BUDGET_FLOPS_MAX_RATIO)
        if off.any():
            rows.warnings.append(
                f"budget column disagrees with the FLOPs in {int(off.sum())} of {off.size} rows "
                f"(budget / flops from {ratio.min():.3g} to {ratio.max():.3g}): a unit slip "
                "(PF-days, GFLOPs) or a different FLOP convention? Map budget in FLOPs")
        # Float noise (1 ulp) in a budget column must not split a budget in two.
        return group_by_flops(given, BUDGET_COLUMN_RTOL, representative="first")
    budget = group_by_flops(pts["flops"].to_numpy(), budget_rtol)
    rows.notes.append(f"no budget column: grouped points whose FLOPs agree within "
                      f"{budget_rtol:.0%} (budget_rtol); budget C = mean FLOPs of the group")
    grouped = pts.assign(budget=budget).groupby("budget")
    span = grouped["flops"].agg(lambda f: f.max() / f.min() - 1)
    wide = span[span > GROUP_SPAN_WARN]
    if len(wide) and (grouped["params"].nunique()[wide.index] >= 3).any():
        rows.warnings.append(
            f"{len(wide)} FLOP group(s) formed with budget_rtol={budget_rtol:g} span up to "
            f"{wide.max():.0%} of their FLOPs: their points were not trained at one budget, "
            "so the IsoFLOP minima are approximate; give a budget column or a smaller --budget-rtol")
    return budget


def group_by_flops(flops, rtol=BUDGET_RTOL, representative="mean"):
    """IsoFLOP groups: sort by FLOPs, start a new group when a point exceeds the group's
    smallest FLOPs by more than rtol. Returns each point's group value: the mean FLOPs of
    the group, or (representative="first") its most common value."""
    flops = np.asarray(flops, float)
    order = np.argsort(flops, kind="stable")
    label = np.empty(flops.size, int)
    group, first = -1, None
    for i in order:
        if first is None or flops[i] > first * (1 + rtol):
            group += 1
            first = flops[i]
        label[i] = group
    if representative == "first":
        reps = []
        for g in range(group + 1):
            vals, counts = np.unique(flops[label == g], return_counts=True)
            reps.append(vals[np.argmax(counts)])
        return np.array(reps)[label]
    means = np.array([flops[label == g].mean() for g in range(group + 1)])
    return means[label]

