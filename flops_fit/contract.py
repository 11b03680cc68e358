"""The words shared by the sweep, its results table, the search, the fit and the report.

One home for the results table's status and origin vocabulary and for the minimum counts
a fit needs, so that the modules that write a table and those that read it agree.
"""

# What a point's row says of how it ended (results.csv, column `status`); only rows whose
# status is OK_STATUS enter a fit.
OK_STATUS = "ok"
# A learning-rate searched point whose best multiplier is the smallest or largest tried
# (flops_fit/lr_search.py): its loss is an upper bound of the tuned loss, so the fit leaves
# it out unless asked, and the plots mark it.
LR_NOT_BRACKETED = "lr-not-bracketed"

# Why each point exists (column `origin`): planned, or added by the bracket-seeking
# search (flops_fit/search.py). A row without one was planned.
ORIGIN_PLANNED = "planned"

# The columns a fitted table must have, and those it may have (units in the fit's docstring).
# max_tokens (tokens the run was planned for), epochs and unique_tokens only feed warnings:
# a row below its run's planned tokens is a checkpoint, and repeated data is worth less.
REQUIRED_COLUMNS = ("params", "tokens", "loss")
OPTIONAL_COLUMNS = ("flops", "budget", "status", "error", "run", "max_tokens", "epochs", "unique_tokens")

# Minimum data for each law.
MIN_BUDGETS = 3  # a line through log C needs at least 3 points to have a residual
MIN_POINTS_PER_BUDGET = 3  # a parabola has 3 coefficients
MIN_PARAMETRIC_POINTS = 6  # more points than the 5 parameters of L(N, D)
