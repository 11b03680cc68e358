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
from flops_fit.contract import MIN_BUDGETS, MIN_PARAMETRIC_POINTS, MIN_POINTS_PER_BUDGET
from flops_fit.fitting.bootstrap import MAX_BOOTSTRAP
from flops_fit.fitting.diagnostics import agreement, backtest, domain_warnings
from flops_fit.fitting.inputs import FitError
from flops_fit.fitting.isoflop import budget_optima, isoflop_law
from flops_fit.fitting.parametric import parametric_law
from flops_fit.fitting.prepare import BUDGET_RTOL, prepare
from flops_fit.fitting.result import INTERVAL_LEVEL, ScalingLaws
from flops_fit.law import HUBER_DELTA

OPTIMA = ("parabola", "lowest", "given")
APPROACHES = ("auto", "isoflop", "parametric")


EXCLUDED_COLUMNS = ["kind", "row", "budget", "params", "tokens", "flops", "loss", "reason"]


def fit(data, *, approach="auto", optimum="parabola", bootstrap=1000, seed=0, columns=None,
        where=None, holdout=None, drop_highest_loss=0, budget_rtol=BUDGET_RTOL,
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
    drop_highest_loss: exclude this many highest-loss usable rows (Besiroglu et al. 2024
        drop the 5 highest-loss points of the digitised Chinchilla data).
    budget_rtol: relative FLOPs tolerance for grouping when there is no budget column.
    level: bootstrap interval level (two-sided percentile).
    tie_exponents: fit L(N, D) with alpha = beta (as e.g. Muennighoff et al. 2023 do).
    huber_delta: Huber threshold on the residual of ln loss in the parametric fit; the
        default 1e-3 is Hoffmann et al. 2022 App. D.2's (and reproduces Besiroglu et al. 2024).
    """
    import pandas as pd
    bootstrap, seed, level, budget_rtol, huber_delta, drop_highest_loss = _checked_options(
        approach, optimum, bootstrap, seed, level, budget_rtol, huber_delta, drop_highest_loss)
    prep = prepare(data, columns=columns, where=where, drop_highest_loss=drop_highest_loss,
                   budget_rtol=budget_rtol, holdout=holdout)
    points = prep.points
    excluded = list(prep.excluded)
    warnings = list(prep.warnings)
    ran = []

    want_par = approach in ("auto", "parametric") and optimum != "given"
    par_reason = ""
    if want_par and len(points) < MIN_PARAMETRIC_POINTS:
        par_reason = (f"data: {len(points)} usable points; the parametric fit needs at least "
                      f"{MIN_PARAMETRIC_POINTS}")
        if approach == "parametric":
            raise FitError(par_reason)
        want_par = False
    if holdout is not None and not want_par:
        raise FitError("holdout: the backtest predicts held-out rows with the parametric law, which "
                       f"cannot be fitted here ({par_reason or 'approach/optimum exclude it'})")

    iso_points = optima = None
    iso_reason = ""
    if approach in ("auto", "isoflop"):
        try:
            iso_points, optima, iso_excluded = isoflop_inputs(
                points, excluded, prep, optimum, budget_rtol, strict=(approach == "isoflop" or not want_par))
            excluded += iso_excluded
        except FitError as err:
            if approach == "isoflop" or not want_par:
                raise
            iso_reason = str(err)

    rng = np.random.default_rng(seed)
    k = prep.flops_per_param_token
    iso = None
    if optima is not None:
        iso = isoflop_law(iso_points, optima, optimum, k, bootstrap, rng, level)
        ran.append(f"isoflop: ran on {len(optima)} given per-budget optima" if optimum == "given" else
                   f"isoflop: ran on {int(optima['bracketed'].sum())} budget(s) with at least "
                   f"{MIN_POINTS_PER_BUDGET} sizes and a bracketed optimum (optimum={optimum})")
    else:
        ran.append(f"isoflop: not run ({iso_reason or 'approach=parametric'})")
    if want_par:
        par, par_reason = _parametric(points, k, bootstrap, rng, level, tie_exponents, huber_delta,
                                      alone=approach == "parametric" or holdout is not None or iso is None)
        warnings += [par_reason] if par_reason else []
    else:
        par, par_reason = None, par_reason or ("optimum=given: the rows are optima, not runs"
                                               if optimum == "given" else "approach=isoflop")
    ran.append(f"parametric: not run ({par_reason})" if par is None else
               f"parametric: ran on {par.n_points} points" + (" with alpha = beta" if tie_exponents else ""))

    warnings += domain_warnings(points, iso, par, bootstrap)
    verdict = agreement(iso, par)
    if verdict.startswith("disagree"):
        warnings.append(f"the two approaches {verdict}")

    held = backtest(par, prep.holdout, level, float(points["flops"].max())) if prep.holdout is not None else None
    excl = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    source = str(data) if isinstance(data, (str, Path)) else type(data).__name__
    provenance = _provenance(data, prep, columns=columns, where=where, holdout=holdout,
                             excluded=excl, approach=approach, optimum=optimum, bootstrap=bootstrap,
                             seed=seed, level=level, budget_rtol=budget_rtol,
                             drop_highest_loss=drop_highest_loss, tie_exponents=tie_exponents,
                             huber_delta=huber_delta)
    return ScalingLaws(iso, par, points, excl, prep.notes, bootstrap, seed, level, source,
                       warnings, ran, verdict, held, provenance)


def _parametric(points, k, bootstrap, rng, level, tie_exponents, huber_delta, alone):
    """(ParametricLaw, "") or, when its fit leaves the floats and the IsoFLOP laws stand
    without it (not alone), (None, why); alone, that FitError is raised."""
    try:
        return parametric_law(points, k, bootstrap, rng, level, tie_exponents, huber_delta), ""
    except FitError as err:
        if alone:
            raise
        return None, str(err)


def _checked_options(approach, optimum, bootstrap, seed, level, budget_rtol, huber_delta, drop_highest_loss):
    """fit's numeric options, validated (FitError naming the argument and the fix)."""
    checks.one_of(approach, "fit", "approach", APPROACHES, error=FitError)
    checks.one_of(optimum, "fit", "optimum", OPTIMA, error=FitError)
    if approach == "parametric" and optimum == "given":
        raise FitError("optimum='given' fits power laws to per-budget optima; use approach='isoflop' or 'auto'")
    return (
        checks.integer(bootstrap, "fit", "bootstrap", "1000 replicates give stable 95% intervals; 0 disables",
                       minimum=0, maximum=MAX_BOOTSTRAP, error=FitError),
        checks.integer(seed, "fit", "seed", "the seed of the bootstrap's random generator", minimum=0,
                       error=FitError),
        checks.fraction(level, "fit", "level", "the two-sided interval level, e.g. 0.95", open_low=True,
                        open_high=True, error=FitError),
        checks.positive_number(budget_rtol, "fit", "budget_rtol", "the relative FLOPs tolerance of a group",
                               error=FitError),
        checks.positive_number(huber_delta, "fit", "huber_delta",
                               "the Huber threshold on ln-loss residuals, e.g. 1e-3", error=FitError),
        checks.integer(drop_highest_loss, "fit", "drop_highest_loss", "rows to drop", minimum=0, error=FitError),
    )


def isoflop_inputs(points, excluded, prep, optimum, budget_rtol, strict):
    """(points of the usable budgets, per-budget optima, new exclusions) or FitError."""
    import pandas as pd
    new = []
    sizes = points.groupby("budget")["params"].nunique()
    need = 1 if optimum == "given" else MIN_POINTS_PER_BUDGET
    small = sizes[sizes < need]
    # A budget planned with too few sizes is a design error (refused when only the IsoFLOP
    # approach is asked for); one left short because some of its runs diverged, failed or
    # are unfinished is data: it is excluded and reported.
    lost = pd.Series([e.get("budget") for e in excluded if e.get("kind") == "row"], dtype=float).value_counts()
    designed_small = small[[n + int(lost.get(b, 0)) < need for b, n in small.items()]]
    if strict and prep.budget_given and len(designed_small):
        listing = ", ".join(f"{b:.3g} ({n} size{'s' if n != 1 else ''})" for b, n in designed_small.items())
        raise FitError(
            f"budget: {len(designed_small)} budget(s) have fewer than {MIN_POINTS_PER_BUDGET} model sizes "
            f"for a parabola: {listing}. Drop them, e.g. where='budget != {designed_small.index[0]:.3g}', "
            "or run more sizes at those budgets"
        )
    for b, n in small.items():
        why = (f"only {n} usable model size(s) (need {MIN_POINTS_PER_BUDGET})"
               if prep.budget_given else
               # Groups formed by FLOPs tolerance are not planned budgets; small ones are noted.
               f"only {n} model size(s) at this FLOPs (need {MIN_POINTS_PER_BUDGET})")
        new.append({"kind": "budget", "budget": float(b), "reason": why})
    enough = sizes[sizes >= need]
    if len(enough) < MIN_BUDGETS:
        raise FitError(
            f"budget: only {len(enough)} budget(s) with at least {need} model "
            f"size(s); a power law needs {MIN_BUDGETS}. "
            + ("Add budgets to the sweep." if prep.budget_given else
               f"Points are grouped by FLOPs within budget_rtol={budget_rtol:g}; give a budget "
               "column or a larger budget_rtol (CLI: --budget-rtol), or fit L(N, D) alone "
               "(approach='parametric').")
        )
    iso_points = points[points["budget"].isin(enough.index)]
    optima = budget_optima(iso_points, optimum, prep.flops_per_param_token)
    for rec in optima[~optima["bracketed"]].itertuples():
        new.append({"kind": "budget", "budget": rec.budget, "params": rec.params_opt,
                    "loss": rec.loss_opt, "reason": f"optimum not bracketed: {rec.reason}"})
    if optima["bracketed"].sum() < MIN_BUDGETS:
        raise FitError(
            f"optimum={optimum!r}: only {int(optima['bracketed'].sum())} budget(s) have a bracketed "
            f"optimum; a power law needs {MIN_BUDGETS}. Sample sizes on both sides of the "
            "minimum" + (" or try optimum='lowest'" if optimum == "parabola" else "")
        )
    return iso_points, optima, new


def _provenance(data, prep, **options):
    """Where every number came from: input and its hash, mapping, filters, options, versions."""
    import hashlib
    import importlib.metadata as md

    import pandas as pd
    import scipy

    if isinstance(data, (str, Path)):
        p = Path(data).expanduser()
        if "://" not in str(data) and p.is_file():
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
