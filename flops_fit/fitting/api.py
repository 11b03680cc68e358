"""`fit()`: which approaches run on which rows, and the result they make together.

Units throughout: compute C in FLOPs, model size N in parameters, data D in tokens,
loss L in nats per token.

References
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla),
  arXiv:2203.15556: Approach 2 (IsoFLOP profiles, Sec. 3.2), Approach 3 (parametric
  fit, Sec. 3.3, eq. 2 and 4, App. D.2).
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102:
  the same recipe with the objective SUMMED (not averaged) over points, and a bootstrap
  over data points for the intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flops_fit import checks
from flops_fit.contract import MIN_PARAMETRIC_POINTS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.backtest import backtest_budgets, split_top_budgets
from flops_fit.fitting.bootstrap import MAX_BOOTSTRAP
from flops_fit.fitting.agreement import DISAGREE, compare
from flops_fit.fitting.diagnostics import backtest, domain_warnings
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.isoflop import isoflop_inputs, isoflop_law
from flops_fit.fitting.parametric import parametric_law
from flops_fit.fitting.prepare import BUDGET_RTOL, prepare
from flops_fit.fitting.result import EXTRAPOLATION_FACTOR, INTERVAL_LEVEL, ScalingLaws
from flops_fit.law import HUBER_DELTA

DEFAULT_BOOTSTRAP = 1000  # resamples: stable 95 % percentile intervals (Efron & Tibshirani 1993, ch. 13)
OPTIMUM_RULES = ("parabola", "lowest", "given")  # how a budget's optimum is read
APPROACHES = ("auto", "isoflop", "parametric")


EXCLUDED_COLUMNS = ["kind", "row", "budget", "params", "tokens", "flops", "loss", "status", "reason"]


def fit(data, *, approach="auto", optimum="parabola", bootstrap=DEFAULT_BOOTSTRAP, seed=0, columns=None,
        where=None, holdout=None, holdout_budgets=0, drop_highest_loss=0, budget_rtol=BUDGET_RTOL,
        level=INTERVAL_LEVEL, tie_exponents=False, huber_delta=HUBER_DELTA) -> ScalingLaws:
    """Fit IsoFLOP power laws (Approach 2) and/or the parametric L(N, D) (Approach 3).

    data: DataFrame, list of dicts, path or URI of a CSV/JSON/JSONL table, a stored sweep
        folder, or an object with a `.table` DataFrame. Columns params (parameters), tokens,
        loss (nats per token); optional flops (FLOPs, default 6ND), budget (nominal FLOPs of
        the IsoFLOP group), status (only 'ok' rows are used), error, run (rows of one run,
        e.g. its checkpoints, are resampled together by the bootstrap), and for the warnings
        only: max_tokens (tokens the run was planned for), epochs, unique_tokens.
    approach: "auto" fits L(N, D) whenever there are enough points and the IsoFLOP laws
        where budgets have enough sizes, and says which ran and why; "isoflop" or
        "parametric" fit only that one and refuse when the data cannot support it.
    optimum: "parabola" (vertex of a parabola in ln N near the valley), "lowest", or
        "given" (each row already is a budget's optimum: power laws are fitted to them).
    bootstrap: bootstrap replicates for the intervals (0 disables; at most MAX_BOOTSTRAP).
    seed: non-negative seed of the bootstrap's random generator.
    columns: {our column: their column or safe expression}, e.g.
        {"params": "Model Size", "flops": "`Training FLOP`"} (see flops_fit.expressions).
    where: safe expression(s); rows where it is False are excluded (reason recorded).
    holdout: safe expression; rows where it is True are not fitted but predicted by the
        parametric law (`laws.backtest`: observed, predicted, interval, relative error).
    holdout_budgets: leave this many of the largest budgets out of both approaches and
        predict their optima (`laws.budget_backtest`: observed, predicted, prediction
        interval, relative error, inside).
    drop_highest_loss: exclude this many highest-loss usable rows (Besiroglu et al. 2024
        drop the 5 highest-loss points of the digitised Chinchilla data).
    budget_rtol: relative FLOPs tolerance for grouping when there is no budget column.
    level: two-sided interval level of every interval (e.g. 0.95).
    tie_exponents: fit L(N, D) with alpha = beta (as e.g. Muennighoff et al. 2023 do).
    huber_delta: Huber threshold on the residual of ln loss in the parametric fit; the
        default 1e-3 is Hoffmann et al. 2022 App. D.2's (and reproduces Besiroglu et al. 2024).
    """
    import pandas as pd
    opts = _checked_options(approach=approach, optimum=optimum, bootstrap=bootstrap, seed=seed, level=level,
                            budget_rtol=budget_rtol, drop_highest_loss=drop_highest_loss,
                            holdout_budgets=holdout_budgets, tie_exponents=tie_exponents, huber_delta=huber_delta)
    prep = prepare(data, columns=columns, where=where, drop_highest_loss=opts["drop_highest_loss"],
                   budget_rtol=opts["budget_rtol"], holdout=holdout)
    points, held_budgets, excluded = prep.points, None, list(prep.excluded)
    if opts["holdout_budgets"]:
        points, held_budgets = split_top_budgets(points, opts["holdout_budgets"])
        excluded += [{"kind": "budget", "budget": float(b), "reason": "held out: predicted by the budget backtest"}
                     for b in sorted(held_budgets["budget"].unique())]
    want_par, par_reason = _parametric_wanted(opts, points, holdout)
    optima, iso_reason = _isoflop_optima(points, excluded, prep, opts, want_par)
    per_token = prep.flops_per_param_token
    par = None
    if want_par:
        par, why_not = _parametric(points, per_token, opts, alone=opts["approach"] == "parametric" or holdout is not None
                                   or optima is None)
        par_reason = why_not or par_reason
    warnings_par = [par_reason] if want_par and par is None else []
    iso = (isoflop_law(optima, opts["optimum"], per_token, opts["level"], None if par is None else par.E.value)
           if optima is not None else None)
    warnings = (list(prep.warnings) + warnings_par + domain_warnings(points, iso, par, opts["bootstrap"])
                + _isoflop_warnings(iso))
    verdict = compare(iso, par, agreement_budgets(iso), opts["level"])
    if verdict.verdict == DISAGREE:
        warnings.append(f"the two approaches {verdict}")
    held = (backtest(par, prep.holdout, opts["level"], float(points["flops"].max()))
            if prep.holdout is not None else None)
    excl = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    source = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    provenance = _provenance(data, prep, columns=columns, where=where, holdout=holdout, excluded=excl, **opts)
    return ScalingLaws(
        iso, par, points, excl, notes=prep.notes, bootstrap=opts["bootstrap"], seed=opts["seed"],
        level=opts["level"], source=source, warnings=warnings,
        approaches=_what_ran(iso, par, optima, opts, iso_reason, par_reason), agreement=verdict, backtest=held,
        budget_backtest=None if held_budgets is None else
        backtest_budgets(held_budgets, iso, par, opts["optimum"], per_token, opts["level"]),
        provenance=provenance)


def _checked_options(**o):
    """The fit's options, validated: FitError naming the argument and the fix."""
    checks.one_of(o["approach"], "fit", "approach", APPROACHES, error=FitError)
    checks.one_of(o["optimum"], "fit", "optimum", OPTIMUM_RULES, error=FitError)
    if o["approach"] == "parametric" and o["optimum"] == "given":
        raise FitError("optimum='given' fits power laws to per-budget optima; use approach='isoflop' or 'auto'")
    o["bootstrap"] = checks.integer(o["bootstrap"], "fit", "bootstrap", f"{DEFAULT_BOOTSTRAP} replicates give stable 95% intervals; "
                                    "0 disables", minimum=0, maximum=MAX_BOOTSTRAP, error=FitError)
    o["seed"] = checks.integer(o["seed"], "fit", "seed", "the seed of the bootstrap's random generator", minimum=0,
                               error=FitError)
    o["level"] = checks.fraction(o["level"], "fit", "level", "the two-sided interval level, e.g. 0.95",
                                 open_low=True, open_high=True, error=FitError)
    o["budget_rtol"] = checks.positive_number(o["budget_rtol"], "fit", "budget_rtol",
                                              "the relative FLOPs tolerance of a group", error=FitError)
    o["drop_highest_loss"] = checks.integer(o["drop_highest_loss"], "fit", "drop_highest_loss", "rows to drop",
                                            minimum=0, error=FitError)
    o["huber_delta"] = checks.positive_number(o["huber_delta"], "fit", "huber_delta",
                                              "the Huber threshold on ln-loss residuals, e.g. 1e-3", error=FitError)
    o["holdout_budgets"] = checks.integer(o["holdout_budgets"], "fit", "holdout_budgets",
                                          "the number of largest budgets to predict", minimum=0, error=FitError)
    return o


def _parametric(points, flops_per_param_token, opts, alone):
    """(ParametricLaw, "") or, when its fit leaves the floats and the IsoFLOP laws stand
    without it (not alone), (None, why); alone, that FitError is raised."""
    try:
        return parametric_law(points, flops_per_param_token, opts["bootstrap"],
                              np.random.default_rng(opts["seed"]), opts["level"],
                              opts["tie_exponents"], opts["huber_delta"]), ""
    except FitError as err:
        if alone:
            raise
        return None, str(err)


def _parametric_wanted(opts, points, holdout):
    """(fit L(N, D)?, why not); FitError where the user asked for it and it cannot run."""
    want = opts["approach"] in ("auto", "parametric") and opts["optimum"] != "given"
    reason = ""
    if want and len(points) < MIN_PARAMETRIC_POINTS:
        reason = f"data: {len(points)} usable points; the parametric fit needs at least {MIN_PARAMETRIC_POINTS}"
        if opts["approach"] == "parametric":
            raise FitError(reason)
        want = False
    if holdout is not None and not want:
        raise FitError("holdout: the backtest predicts held-out rows with the parametric law, which "
                       f"cannot be fitted here ({reason or 'approach/optimum exclude it'})")
    return want, reason


def _isoflop_optima(points, excluded, prep, opts, want_par):
    """(per-budget optima or None, why not); adds the budgets left out to `excluded`."""
    if opts["approach"] not in ("auto", "isoflop"):
        return None, ""
    strict = opts["approach"] == "isoflop" or not want_par
    try:
        _, optima, iso_excluded = isoflop_inputs(points, excluded, prep, opts["optimum"], opts["budget_rtol"], strict)
    except FitError as err:
        if strict:
            raise
        return None, str(err)
    excluded += iso_excluded
    return optima, ""


def _what_ran(iso, par, optima, opts, iso_reason, par_reason):
    """One line per approach: ran on what, or why not."""
    optimum = opts["optimum"]
    if iso is not None:
        first = (f"isoflop: ran on {len(optima)} given per-budget optima" if optimum == "given" else
                 f"isoflop: ran on {int(optima['bracketed'].sum())} budget(s) with at least "
                 f"{MIN_POINTS_PER_BUDGET} sizes and a bracketed optimum (optimum={optimum})")
    else:
        first = f"isoflop: not run ({iso_reason or 'approach=parametric'})"
    if par is not None:
        second = f"parametric: ran on {par.n_points} points" + (" with alpha = beta" if opts["tie_exponents"] else "")
    else:
        why = par_reason or ("optimum=given: the rows are optima, not runs" if optimum == "given" else "approach=isoflop")
        second = f"parametric: not run ({why})"
    return [first, second]


def _isoflop_warnings(iso):
    """What the IsoFLOP loss law cannot tell: no residual left, or a floor at its bound 0."""
    if iso is None:
        return []
    budgets = int(iso.optima["bracketed"].sum())
    if iso.fits["loss"]["dof"] <= 0:
        return [f"isoflop loss law rests on {budgets} budgets: E + k C^-c has no residual left, so its loss "
                "has no interval; add budgets (or let L(N, D) run)"]
    if iso.floor == "fitted" and iso.E.value <= 0:
        return [f"isoflop loss floor E sits at its bound 0: the optimal losses of {budgets} budgets do not "
                "identify an irreducible loss, and the loss far beyond them is unknown (its interval says "
                "so); add budgets to read a floor"]
    return []


def agreement_budgets(iso):
    """Where the approaches are compared by default: the largest budget in the IsoFLOP laws
    and EXTRAPOLATION_FACTOR times beyond it (where a prediction is first an extrapolation)."""
    return [] if iso is None else [iso.largest_budget, EXTRAPOLATION_FACTOR * iso.largest_budget]


def _provenance(data, prep, **options):
    """Where every number came from: input and its hash, mapping, filters, options, versions."""
    import hashlib
    import importlib.metadata as md

    import pandas as pd
    import scipy

    from flops_fit import storage

    if isinstance(data, (str, Path)):
        p = Path(data).expanduser()
        if not storage.is_uri(data) and p.is_file():
            digest = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        else:  # a sweep folder or a remote table: hash the rows fitted
            digest = "sha256 of the rows fitted:" + _frame_hash(prep)
        source = str(data)
    else:
        source, digest = f"{type(data).__name__} in memory", "sha256:" + _frame_hash(prep)
    excl = options.pop("excluded")
    try:
        version = md.version("flops-fit")
    except md.PackageNotFoundError:
        version = "unknown"
    return {
        "input": source, "content": digest, "rows read": prep.raw_rows,
        "mapping": dict(options.pop("columns") or {}),
        "where": options.pop("where"), "holdout": options.pop("holdout"),
        "excluded": f"{int((excl['kind'] == 'row').sum())} row(s), {int((excl['kind'] == 'budget').sum())} budget(s)",
        "options": options,
        "versions": f"flops_fit {version}, numpy {np.__version__}, scipy {scipy.__version__}, pandas {pd.__version__}",
    }


def _frame_hash(prep):
    import hashlib

    import pandas as pd
    h = pd.util.hash_pandas_object(prep.points[["params", "tokens", "flops", "loss"]], index=False)
    return hashlib.sha256(h.to_numpy().tobytes()).hexdigest()[:16]
