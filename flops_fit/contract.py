"""The words shared by the sweep, its results table, the search, the fit and the report.

One home for the results table's status and origin vocabulary and for the minimum counts
a fit needs, so that the modules that write a table and those that read it agree.
"""

# What a point's row says of how it ended (results.csv, column `status`); only rows whose
# status is OK_STATUS enter a fit.
OK_STATUS = "ok"  # trained its planned tokens; its loss is the final evaluation's
DIVERGED_STATUS = "diverged"  # the loss became NaN or infinite: data (the point is too big or its LR too high)
FAILED_STATUS = "failed"  # an error stopped it (the row's `error` column says which)
INCOMPLETE_STATUS = "incomplete"  # started or planned, not finished yet (a resume trains it)
# A planned point a bracket-seeking search chose not to train (the error column says why;
# search/state.json holds the search's decisions).
SKIPPED_STATUS = "skipped"
# A learning-rate searched point whose best multiplier is the smallest or largest tried
# (flops_fit/lr_search.py): its loss is an upper bound of the tuned loss, so the fit leaves
# it out unless asked, and the plots mark it.
LR_NOT_BRACKETED = "lr-not-bracketed"
STATUSES = (OK_STATUS, DIVERGED_STATUS, FAILED_STATUS, INCOMPLETE_STATUS, SKIPPED_STATUS, LR_NOT_BRACKETED)
ENDED_STATUSES = (OK_STATUS, DIVERGED_STATUS)  # a point that ended with a loss (finite or not)
UNFINISHED_STATUSES = (FAILED_STATUS, INCOMPLETE_STATUS)  # a rerun of the sweep trains these

# Why each point exists (column `origin`): planned, or added by the bracket-seeking
# search (flops_fit/search.py). A row without one was planned.
ORIGIN_PLANNED = "planned"
ORIGIN_EXTENDED = "extended"  # added beyond the edge of a budget whose valley was not bracketed
ORIGIN_RECENTRED = "re-centred"  # a size of a budget re-centred on the fitted power law
ORIGINS = (ORIGIN_PLANNED, ORIGIN_EXTENDED, ORIGIN_RECENTRED)

# The columns a fitted table must have, and those it may have (units in the fit's docstring).
# max_tokens (tokens the run was planned for), epochs and unique_tokens only feed warnings:
# a row below its run's planned tokens is a checkpoint, and repeated data is worth less.
REQUIRED_COLUMNS = ("params", "tokens", "loss")
OPTIONAL_COLUMNS = ("flops", "budget", "status", "error", "run", "max_tokens", "epochs", "unique_tokens")

# Minimum data for each law.
MIN_BUDGETS = 3  # a line through log C needs at least 3 points to have a residual
MIN_POINTS_PER_BUDGET = 3  # a parabola has 3 coefficients
MIN_PARAMETRIC_POINTS = 6  # more points than the 5 parameters of L(N, D)
