"""Presentation of fitted scaling laws: Chinchilla-style table, summary text, plots.

Never fits anything and never imports the fit (the numbers and verdicts come stored on
the `ScalingLaws` it is given), writes only to
the paths it is given, and draws on `matplotlib.figure.Figure` objects with the Agg
canvas so no global pyplot state or rcParams are touched.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from flops_fit.contract import LR_NOT_BRACKETED, ORIGIN_PLANNED

# Default prediction budgets: the sweep's budgets plus this many powers of ten above the
# largest one (Chinchilla Table 3 extrapolates several decades past the sweep).
DEFAULT_EXTRA_DECADES = 3
FIGURE_DPI = 120
FIGURE_SIZE = (7.0, 5.0)  # inches
BAND_ALPHA = 0.2  # opacity of bootstrap interval bands
CURVE_POINTS = 200  # samples along each drawn curve
LEGEND_FONT_SIZE = 8  # points: the legends sit inside the axes and must not hide the data
NARROW_LEGEND_FONT_SIZE = 7  # points: the three narrow panels of optima vs compute
EXCLUDED_ROWS_SHOWN = 12  # the summary lists this many excluded row numbers per reason, then "..."
LARGEST_DECADE = math.floor(math.log10(sys.float_info.max))  # 308: 10^308 is a float, 10^309 is not
# A log axis puts ticks at 10^k out to its limits plus a margin of 5% of its span, so values
# beyond 1e+-250 could put a tick past the largest float (1.8e308, an OverflowError inside
# matplotlib). Fitted values out there are not drawn; fitted rows out there are refused.
DRAWABLE_DECADES = 250
PLOT_NAMES = ("isoflop_curves", "optima_vs_compute", "parametric_residuals", "backtest")
PLOT_FILES = tuple(f"{name}.png" for name in PLOT_NAMES)  # what write_figures writes


def default_budgets(laws):
    """Sweep budgets (FLOPs, bracketed or not) plus the next powers of ten above them;
    without IsoFLOP budgets, the powers of ten the fitted FLOPs span."""
    if laws.isoflop is not None:
        sweep = np.sort(laws.isoflop.optima["budget"].to_numpy())
    else:
        f = laws.points["flops"]
        sweep = 10.0 ** np.arange(math.ceil(math.log10(f.min())), math.floor(math.log10(f.max())) + 1)
        if not sweep.size:
            sweep = np.array([float(f.max())])
    top = math.floor(math.log10(sweep.max()))
    # Decades past the largest float are no budget (10.0 ** 309 raises OverflowError).
    extra = [10.0 ** (top + i) for i in range(1, DEFAULT_EXTRA_DECADES + 1) if top + i <= LARGEST_DECADE]
    return np.concatenate([sweep, extra])


def drawable(values):
    """values as floats, with those a log axis cannot hold (beyond 1e+-DRAWABLE_DECADES,
    not positive, NaN) set to NaN, which matplotlib leaves out."""
    v = np.asarray(values, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(np.log10(v)) <= DRAWABLE_DECADES, v, np.nan)


def _fmt(x, spec=".3g"):
    return "nan" if not np.isfinite(x) else format(x, spec)


def _with_interval(v, lo, hi, spec=".3g"):
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{_fmt(v, spec)} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"
    return _fmt(v, spec)


def chinchilla_table(laws, budgets=None) -> pd.DataFrame:
    """Chinchilla-Table-3-style: `laws.predict` at `budgets` (FLOPs; default_budgets when
    None), one row per approach per budget, with tokens_per_param = D/N at the optimum."""
    budgets = default_budgets(laws) if budgets is None else np.atleast_1d(np.asarray(budgets, float))
    pred = laws.predict(budgets)
    pred.insert(pred.columns.get_loc("tokens_high") + 1, "tokens_per_param", pred["tokens"] / pred["params"])
    return pred


def markdown_table(laws, budgets=None) -> str:
    """chinchilla_table as markdown: intervals in brackets, extrapolated budgets marked."""
    pred = chinchilla_table(laws, budgets)
    pct = int(round(100 * laws.level))
    lines = [
        f"| approach | FLOPs | parameters ({pct}% CI) | tokens ({pct}% CI) | tokens/parameter "
        f"| loss, nats/token ({pct}% CI) |",
        "|---|---|---|---|---|---|",
    ]
    unreliable = laws.unreliable
    for r in pred.itertuples():
        flops = f"{r.flops:.2e}" + (" (extrapolated)" if r.extrapolated else "")
        name = r.approach + (" (unreliable intervals)" if r.approach in unreliable else "")
        lines.append(
            f"| {name} | {flops} | {_with_interval(r.params, r.params_low, r.params_high)} "
            f"| {_with_interval(r.tokens, r.tokens_low, r.tokens_high)} | {r.tokens_per_param:.3g} "
            f"| {_with_interval(r.loss, r.loss_low, r.loss_high, '.4g')} |"
        )
    if pred["extrapolated"].any():
        lines.append(f"\n(extrapolated: more than {laws.extrapolation_factor:g}x the largest fitted FLOPs, "
                     f"{laws.max_fitted_flops:.3g})")
    return "\n".join(lines)


def summary_text(laws):
    """Warnings first; then which approaches ran, exponents, coefficients and parametric
    parameters with intervals, the backtest, exclusions and the provenance block."""
    iso, par = laws.isoflop, laws.parametric
    pct = int(round(100 * laws.level))
    ci = (f"{pct}%; isoflop: t intervals from the scatter of the budgets' optima about each law; "
          + (f"parametric: bootstrap over runs, {laws.bootstrap} replicates, seed {laws.seed}"
             if laws.bootstrap else "parametric: none (bootstrap=0)"))
    unreliable = laws.unreliable
    out = []
    for w in laws.warnings:
        out.append(f"WARNING: {w}")
    if out:
        out.append("")
    out += [
        f"Scaling-law fit of {laws.source}" if laws.source else "Scaling-law fit",
        f"  points used: {len(laws.points)} in {laws.points['budget'].nunique()} FLOP groups; "
        f"excluded rows: {int((laws.excluded['kind'] == 'row').sum())}"
        + (f"; budgets in the power laws: {int(iso.optima['bracketed'].sum())} of {len(iso.optima)}"
           if iso is not None else ""),
        f"  intervals: {ci}",
        f"  FLOPs per parameter per token: {(iso or par).flops_per_param_token:.4g}",
    ]
    for line in laws.approaches:
        out.append(f"  approach {line}")
    if laws.agreement:
        out.append(f"  approaches {laws.agreement}")
    for note in laws.notes:
        out.append(f"  note: {note}")
    if iso is not None:
        label = " -- UNRELIABLE intervals" if "isoflop" in unreliable else ""
        out += [
            "",
            f"IsoFLOP approach (optimum = {iso.optimum}; C = budget FLOPs){label}",
            f"  N_opt = k_N * C^a   a = {iso.a}   k_N = {iso.k_N}",
            f"  D_opt = k_D * C^b   b = {iso.b}   k_D = {iso.k_D}",
            f"  L_opt = E + k_L * C^c   E = {iso.E}   c = {iso.loss_exponent}   k_L = {iso.k_L:.4g}",
            "  (E fitted to the budgets' optimal losses)" if iso.floor == "fitted" else
            "  (E of the parametric law: too few budgets for a floor of their own)",
        ]
    if par is not None:
        label = " -- UNRELIABLE intervals" if "parametric" in unreliable else ""
        out += [
            "",
            f"Parametric approach L(N, D) = E + A/N^alpha + B/D^beta "
            f"({par.n_points} points, Huber delta={par.huber_delta:g} on log loss, objective {par.objective:.6g})"
            + (", alpha = beta" if par.tie_exponents else "") + label,
            *_huber_regime(par),
            f"  E = {par.E}   A = {par.A}   B = {par.B}",
            f"  alpha = {par.alpha}   beta = {par.beta}",
            f"  N_opt ~ C^a   a = {par.a}   (a = beta/(alpha+beta))",
            f"  D_opt ~ C^b   b = {par.b}   (b = alpha/(alpha+beta))",
            f"  G = (alpha A / (beta B))^(1/(alpha+beta)) = {par.G}  "
            f"(N_opt = G (C/{par.flops_per_param_token:.3g})^a, D_opt = (C/{par.flops_per_param_token:.3g})^b / G)",
        ]
        if par.bootstrap_dropped:
            out.append(f"  {par.bootstrap_dropped} of {laws.bootstrap} bootstrap replicate(s) failed and "
                       "were left out of the intervals")
    if laws.backtest is not None:
        out += ["", backtest_text(laws)]
    if laws.budget_backtest is not None:
        out += ["", budget_backtest_text(laws)]
    ex = laws.excluded
    out += ["", f"Excluded ({len(ex)})" if len(ex) else "Excluded: nothing"]
    if len(ex):
        grouped = ex.groupby("reason", sort=False)
        for reason, grp in grouped:
            if (grp["kind"] == "budget").all():
                which = ", ".join(f"{b:.3g}" for b in grp["budget"])
                out.append(f"  budget(s) {which} FLOPs: {reason}")
            else:
                rows = ", ".join(str(int(r)) for r in grp["row"].head(EXCLUDED_ROWS_SHOWN))
                more = " ..." if len(grp) > EXCLUDED_ROWS_SHOWN else ""
                out.append(f"  {len(grp)} row(s) [{rows}{more}]: {reason}")
    if laws.provenance:
        out += ["", "Provenance"]
        for key, value in laws.provenance.items():
            if key == "options":
                value = ", ".join(f"{k}={v!r}" for k, v in value.items())
            out.append(f"  {key}: {value}")
    return "\n".join(out)


# Median |residual of ln loss| above this many Huber deltas: nearly every point sits on the
# linear arm of the Huber loss, so the fit is in effect a least-absolute-deviations (median)
# fit, not the least-squares fit a small delta is often read as.
HUBER_L1_FACTOR = 10.0


def _huber_regime(par):
    """One line when the residuals dwarf the Huber threshold, else nothing."""
    ratio = par.residual_median / par.huber_delta
    if not ratio > HUBER_L1_FACTOR:
        return []
    return [f"  median |residual of ln loss| = {par.residual_median:.3g}, {ratio:.0f}x the Huber delta: "
            "the Huber loss acts as L1 here (a median fit, robust to outliers); a larger --huber-delta "
            "weighs the residuals by their squares"]


def backtest_text(laws):
    """Held-out rows: observed vs predicted loss (parametric law), relative error."""
    bt = laws.backtest
    pct = int(round(100 * laws.level))
    err = bt["relative_error"].abs()
    lines = [
        f"Backtest: {len(bt)} held-out row(s) predicted by the parametric law fitted to the rest "
        f"(mean |relative error| {err.mean():.2%}, max {err.max():.2%}"
        + (f"; {int(bt['inside_interval'].sum())} of {len(bt)} inside the {pct}% interval)"
           if np.isfinite(bt["predicted_low"]).all() else ")"),
        f"| row | parameters | tokens | FLOPs | observed loss | predicted ({pct}% CI) | relative error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in bt.itertuples():
        flops = f"{r.flops:.2e}" + (" (extrapolated)" if r.extrapolated else "")
        lines.append(f"| {r.row} | {r.params:.3g} | {r.tokens:.3g} | {flops} | {r.loss:.4g} "
                     f"| {_with_interval(r.predicted, r.predicted_low, r.predicted_high, '.4g')} "
                     f"| {r.relative_error:+.2%} |")
    return "\n".join(lines)


def budget_backtest_text(laws):
    """The top budgets held out: each approach's N_opt and loss against the optimum the
    held-out points show, with prediction intervals (of a new observation)."""
    bt = laws.budget_backtest
    pct = int(round(100 * laws.level))
    if bt.empty:
        return "Budget backtest: no held-out budget has a bracketed optimum to compare with"
    lines = [f"Budget backtest: the largest budget(s) left out and predicted; {int(bt['inside'].sum())} of "
             f"{len(bt)} observed optima inside the {pct}% prediction interval",
             f"| approach | FLOPs | quantity | observed | predicted ({pct}% prediction interval) | relative error |",
             "|---|---|---|---|---|---|"]
    for r in bt.itertuples():
        spec = ".4g" if r.quantity == "loss" else ".3g"
        note = "" if r.interval == "prediction" else " (interval of the mean)"
        lines.append(f"| {r.approach} | {r.budget:.3g} | {'N_opt' if r.quantity == 'params' else 'loss'} "
                     f"| {r.observed:{spec}} | {_with_interval(r.predicted, r.low, r.high, spec)}{note} "
                     f"| {r.relative_error:+.2%} |")
    return "\n".join(lines)


def _new_figure(ncols: int = 1, width: float = 1.0, height: float = 1.0):
    """(figure, axes): `ncols` axes side by side on a FIGURE_SIZE scaled by width x height,
    drawn on its own Agg canvas (no pyplot: no global state, no GUI)."""
    fig = Figure(figsize=(FIGURE_SIZE[0] * width, FIGURE_SIZE[1] * height), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _budget_colourbar(fig, cmap, norm, ax, label: str) -> None:
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)


def _budget_colours(budgets):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=min(budgets), vmax=max(budgets) * (1 + 1e-9))
    return colormaps["viridis"], norm


def plot_isoflop_curves(laws) -> Figure:
    """Loss vs N (log x) per budget, fitted parabolas, optima; unbracketed ones hollow."""
    fig, ax = _new_figure()
    pts = laws.points
    opt = laws.isoflop.optima
    cmap, norm = _budget_colours(opt["budget"].to_numpy())
    for rec in opt.itertuples():
        colour = cmap(norm(rec.budget))
        grp = pts[pts["budget"] == rec.budget]
        added = (grp["origin"] != ORIGIN_PLANNED).to_numpy() if "origin" in grp else np.zeros(len(grp), bool)
        ax.scatter(grp["params"][~added], grp["loss"][~added], s=14, color=colour, alpha=0.8)
        # Points a bracket-seeking search added (flops_fit/search.py): diamonds.
        ax.scatter(grp["params"][added], grp["loss"][added], s=22, marker="D", color=colour,
                   edgecolor="black", linewidth=0.5, alpha=0.9)
        if laws.isoflop.optimum == "parabola" and np.isfinite(rec.c2):
            x = np.linspace(math.log(rec.params_min), math.log(rec.params_max), CURVE_POINTS) - rec.log_n_centre
            ax.plot(np.exp(x + rec.log_n_centre), rec.c0 + rec.c1 * x + rec.c2 * x * x,
                    color=colour, lw=1)
        if rec.bracketed:
            ax.scatter(drawable([rec.params_opt]), [rec.loss_opt], marker="*", s=120, color=colour,
                       edgecolor="black", zorder=3)
        else:
            ax.scatter(drawable([rec.params_opt]), [rec.loss_opt], marker="X", s=90, facecolor="none",
                       edgecolor="red", zorder=3)
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="optimum (used)")
    ax.scatter([], [], marker="X", s=90, facecolor="none", edgecolor="red",
               label="not bracketed (excluded)")
    _mark_lr_not_bracketed(ax, laws, cmap, norm)
    if "origin" in pts and (pts["origin"] != ORIGIN_PLANNED).any():
        ax.scatter([], [], marker="D", s=22, color="grey", edgecolor="black", linewidth=0.5,
                   label="added by the search")
    ax.set_xscale("log")
    ax.set_xlabel("model size N (parameters)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"IsoFLOP profiles (optimum: {laws.isoflop.optimum})")
    ax.legend(loc="upper right", fontsize=LEGEND_FONT_SIZE)
    _budget_colourbar(fig, cmap, norm, ax, "compute budget C (FLOPs)")
    fig.tight_layout()
    return fig


def _mark_lr_not_bracketed(ax, laws, cmap, norm) -> None:
    """Points of an LR search whose best learning rate was at the grid's edge (left out of
    the fit: their loss is only an upper bound of the tuned one): hollow circles."""
    ex = laws.excluded
    if "status" not in ex or not len(ex):
        return
    rows = ex[(ex["status"] == LR_NOT_BRACKETED) & np.isfinite(pd.to_numeric(ex["loss"], errors="coerce"))]
    if not len(rows):
        return
    for rec in rows.itertuples():
        ax.scatter(drawable([rec.params]), [rec.loss], s=40, facecolor="none", linewidth=1.2,
                   edgecolor=cmap(norm(rec.budget)) if np.isfinite(rec.budget) else "grey")
    ax.scatter([], [], s=40, facecolor="none", edgecolor="grey", linewidth=1.2,
               label="LR not bracketed (excluded)")


def plot_optima_vs_compute(laws) -> Figure:
    """N_opt, D_opt, L_opt against C (log axes): per-budget optima, laws, bootstrap bands."""
    fig, axes = _new_figure(3, width=1.8, height=0.9)
    if laws.isoflop is not None:
        opt = laws.isoflop.optima
    else:  # no IsoFLOP optima to show: only the parametric law's curves
        opt = pd.DataFrame({"budget": laws.points["flops"].agg(["min", "max"]).to_numpy(),
                            "bracketed": False, "params_opt": np.nan, "tokens_opt": np.nan,
                            "loss_opt": np.nan})
    budgets = opt["budget"].to_numpy()
    grid = np.logspace(math.log10(budgets.min()), math.log10(budgets.max()) + 1, CURVE_POINTS)
    pred = laws.predict(grid)
    for col in pred.columns.drop(["approach", "flops", "extrapolated"]):
        pred[col] = drawable(pred[col])
    opt = opt.assign(**{c: drawable(opt[c]) for c in ("params_opt", "tokens_opt", "loss_opt")})
    specs = [("params", "params_opt", "N_opt (parameters)"),
             ("tokens", "tokens_opt", "D_opt (tokens)"),
             ("loss", "loss_opt", "L_opt (nats/token)")]
    styles = {"isoflop": ("tab:blue", "-"), "parametric": ("tab:orange", "--")}
    for ax, (col, opt_col, label) in zip(axes, specs):
        used = opt[opt["bracketed"]]
        left = opt[~opt["bracketed"] & np.isfinite(opt[opt_col])]
        ax.scatter(used["budget"], used[opt_col], color="black", s=18, zorder=3,
                   label="per-budget optimum")
        if len(left):
            ax.scatter(left["budget"], left[opt_col], marker="x", color="red", s=30, zorder=3,
                       label="not bracketed (excluded)")
        for approach, grp in pred.groupby("approach", sort=False):
            colour, ls = styles.get(approach, ("tab:green", ":"))
            ax.plot(grp["flops"], grp[col], color=colour, ls=ls, label=f"{approach} law")
            if np.isfinite(grp[f"{col}_low"]).all():
                ax.fill_between(grp["flops"], grp[f"{col}_low"], grp[f"{col}_high"],
                                color=colour, alpha=BAND_ALPHA)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if col == "loss":
            # Losses span less than a decade: plain numbers read better than 2x10^0.
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.set_title(label.split(" ")[0] + " vs compute")
    pct = int(round(100 * laws.level))
    band = f"bands: {pct}% intervals"
    axes[0].legend(fontsize=NARROW_LEGEND_FONT_SIZE, loc="upper left", title=band,
                   title_fontsize=NARROW_LEGEND_FONT_SIZE)
    fig.suptitle("Compute-optimal allocation")
    fig.tight_layout()
    return fig


def plot_parametric_residuals(laws) -> Figure:
    """Residual ln L_fit - ln L_obs vs N, and predicted vs observed loss."""
    fig, (left, right) = _new_figure(2, width=1.6)
    pts = laws.points
    par = laws.parametric
    pred = par.loss(pts["params"], pts["tokens"])
    resid = np.log(pred) - np.log(pts["loss"].to_numpy())
    cmap, norm = _budget_colours(pts["budget"].to_numpy())
    left.scatter(pts["params"], resid, c=pts["budget"], cmap=cmap, norm=norm, s=14)
    left.axhline(0.0, color="black", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("model size N (parameters)")
    left.set_ylabel("residual ln L_fit - ln L_observed")
    left.set_title("Parametric fit residuals")
    right.scatter(pts["loss"], pred, c=pts["budget"], cmap=cmap, norm=norm, s=14)
    lo = min(pts["loss"].min(), pred.min())
    hi = max(pts["loss"].max(), pred.max())
    right.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="y = x")
    right.set_xlabel("observed loss (nats/token)")
    right.set_ylabel("fitted L(N, D) (nats/token)")
    right.set_title("Predicted vs observed")
    right.legend(fontsize=LEGEND_FONT_SIZE)
    _budget_colourbar(fig, cmap, norm, [left, right], "FLOP group C (FLOPs)")
    return fig


def plot_backtest(laws) -> Figure:
    """Held-out rows: predicted (with interval) against observed loss, and relative error vs N."""
    fig, (left, right) = _new_figure(2, width=1.6)
    bt = laws.backtest
    fitted = laws.points
    left.scatter(fitted["loss"], laws.parametric.loss(fitted["params"], fitted["tokens"]), s=10,
                 color="grey", alpha=0.6, label="fitted rows")
    yerr = None
    if np.isfinite(bt["predicted_low"]).all():
        yerr = np.vstack([bt["predicted"] - bt["predicted_low"], bt["predicted_high"] - bt["predicted"]])
    left.errorbar(bt["loss"], bt["predicted"], yerr=yerr, fmt="o", color="tab:red", ms=5,
                  label="held-out rows")
    lo = min(fitted["loss"].min(), bt["loss"].min(), bt["predicted"].min())
    hi = max(fitted["loss"].max(), bt["loss"].max(), bt["predicted"].max())
    left.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="y = x")
    left.set_xlabel("observed loss (nats/token)")
    left.set_ylabel("predicted L(N, D) (nats/token)")
    left.set_title("Backtest: held-out rows")
    left.legend(fontsize=LEGEND_FONT_SIZE)
    right.scatter(bt["params"], 100 * bt["relative_error"], color="tab:red")
    right.axhline(0.0, color="black", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("model size N (parameters)")
    right.set_ylabel("relative error of predicted loss (%)")
    right.set_title("Backtest error per held-out row")
    fig.tight_layout()
    return fig


def figures(laws) -> dict:
    """The plots the fit supports, {name: matplotlib Figure}; names are PLOT_FILES' stems."""
    drawn = {}
    if laws.isoflop is not None:
        drawn["isoflop_curves"] = plot_isoflop_curves(laws)
    drawn["optima_vs_compute"] = plot_optima_vs_compute(laws)
    if laws.parametric is not None:
        drawn["parametric_residuals"] = plot_parametric_residuals(laws)
    if laws.backtest is not None:
        drawn["backtest"] = plot_backtest(laws)
    return drawn


def write_figures(laws, out_dir) -> list:
    """Write the plots as PNG files to out_dir (created if missing); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(laws).items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1])
    return paths


# --- the learning-rate search (run_sweep(lr_search=...), flops_fit/lr_search.py) ------------


def lr_search_text(points: pd.DataFrame, law=None) -> str:
    """One line per searched point: its best multiplier, the LR it trained, lr_opt (the
    parabola's vertex in ln lr) and whether the LR was bracketed; then the fitted rule.
    `points`: a searched sweep's one-row-per-point table (SweepResults.table)."""
    rows = points[points["lr_multiplier"].notna()] if "lr_multiplier" in points else points.iloc[:0]
    lines = ["| point | status | best multiplier | peak lr | lr_opt | LR bracketed | loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        bracketed = "yes" if r.lr_bracketed is True or r.lr_bracketed == 1 else (
            "NO: LR not bracketed" if r.lr_bracketed is False or r.lr_bracketed == 0 else "")
        lines.append(f"| {r.point_id} | {r.status} | {_fmt_any(r.lr_multiplier)} | {_fmt_any(r.lr)} "
                     f"| {_fmt_any(r.lr_opt)} | {bracketed} | {_fmt_any(r.loss, '.4f')} |")
    if law is not None:
        lines.append(f"\nFitted rule: {law.describe()}")
    return "\n".join(lines)


def _fmt_any(x, spec=".3g"):
    """_fmt of a table cell that may be empty (None) or not a float."""
    try:
        return _fmt(float(x), spec)
    except (TypeError, ValueError):
        return ""


def plot_optimal_lr(points: pd.DataFrame, law=None) -> Figure:
    """lr_opt against N per budget (log-log), the fitted rule as a line; points whose LR was
    not bracketed as red crosses (their lr_opt is only a bound)."""
    fig, ax = _new_figure()
    rows = points[points["lr_opt"].notna()] if "lr_opt" in points else points.iloc[:0]
    if len(rows):
        cmap, norm = _budget_colours(rows["budget"].astype(float).to_numpy())
        bracketed = rows["lr_bracketed"].astype(bool).to_numpy()
        colours = [cmap(norm(b)) for b in rows["budget"].astype(float)]
        ax.scatter(rows["params"][bracketed], rows["lr_opt"][bracketed], s=24,
                   c=[c for c, k in zip(colours, bracketed) if k], label="lr_opt (bracketed)")
        ax.scatter(rows["params"][~bracketed], rows["lr_opt"][~bracketed], s=60, marker="X",
                   facecolor="none", edgecolor="red", label="LR not bracketed (excluded)")
        _budget_colourbar(fig, cmap, norm, ax, "compute budget C (FLOPs)")
    if law is not None and len(rows):
        n = np.geomspace(rows["params"].min(), rows["params"].max(), CURVE_POINTS)
        ax.plot(n, law(n), color="black", lw=1, label=f"fit: {law.coefficient:.3g} N^-{law.exponent:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model size N (parameters)")
    ax.set_ylabel("optimal peak learning rate")
    ax.set_title("Optimal learning rate by model size")
    ax.legend(loc="upper right", fontsize=LEGEND_FONT_SIZE)
    fig.tight_layout()
    return fig


# --- the report's files, in a local folder or in object storage ------------------------------


def write_report(folder, laws, *, texts: bool = True, plots: bool = True, prediction=None,
                 lr_search=None) -> list:
    """Write the fit `laws` into `folder` (a local path or a URI; made if missing) and
    return the paths written, spelled as `folder` is: summary.txt and table.md (with
    `texts`), prediction.csv (the DataFrame `prediction`, when given), the plots (with
    `plots`, as laws.plot draws them) and, for an LR-searched sweep, lr_search.md and
    optimal_lr.png (`lr_search`: its (text, figure), sweep_script.lr_search_report).

    The one writer of a fit's files: the live fit, the sweep scripts' closing report and
    `flops-fit fit --plots`. Every figure is drawn before any file is written, so a fit
    whose rows a log axis cannot draw (laws.plot raises) leaves the folder as it was.
    Each file is replaced atomically (flops_fit/storage.py), in a bucket by one PUT.
    """
    from flops_fit import storage

    drawn = {f"{name}.png": fig for name, fig in laws.plot().items()} if plots else {}
    files = {}
    if texts:
        files["summary.txt"] = (laws.summary() + "\n").encode()
        files["table.md"] = (laws.to_markdown() + "\n").encode()
    if prediction is not None:
        files["prediction.csv"] = prediction.to_csv(index=False).encode()
    files.update({name: _png(fig) for name, fig in drawn.items()})
    if lr_search is not None:
        text, figure = lr_search
        files["lr_search.md"] = (text + "\n").encode()
        files["optimal_lr.png"] = _png(figure)
    out = storage.Folder(folder)
    for name, data in files.items():
        out.write_bytes(name, data)
    return [out.uri(name) for name in files]


def _png(fig) -> bytes:
    """A figure as PNG bytes (what fig.savefig("x.png") writes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
