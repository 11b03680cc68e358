"""Plots of fitted scaling laws: IsoFLOP profiles, optima against compute, the parametric
fit's residuals, the backtest, and the learning-rate search.

Like report.py it never fits anything and never imports the fit. It draws on
`matplotlib.figure.Figure` objects with their own Agg canvas, so no global pyplot state or
rcParams are touched, and writes only to the folder it is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from flops_fit.contract import LR_NOT_BRACKETED, ORIGIN_PLANNED

FIGURE_DPI = 120
FIGURE_SIZE = (7.0, 5.0)  # inches
BAND_ALPHA = 0.2  # opacity of interval bands
CURVE_POINTS = 200  # samples along each drawn curve
LEGEND_FONT_SIZE = 8  # points: the legends sit inside the axes and must not hide the data
NARROW_LEGEND_FONT_SIZE = 7  # points: the three narrow panels of optima vs compute

# A log axis puts ticks at 10^k out to its limits plus a margin of 5% of its span, so values
# beyond 1e+-250 could put a tick past the largest float (1.8e308, an OverflowError inside
# matplotlib). Fitted values out there are not drawn; fitted rows out there are refused.
DRAWABLE_DECADES = 250
PLOT_NAMES = ("isoflop_curves", "optima_vs_compute", "parametric_residuals", "backtest")
PLOT_FILES = tuple(f"{name}.png" for name in PLOT_NAMES)  # what write_figures writes


def drawable(values):
    """values as floats, with those a log axis cannot hold (beyond 1e+-DRAWABLE_DECADES,
    not positive, NaN) set to NaN, which matplotlib leaves out."""
    v = np.asarray(values, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(np.log10(v)) <= DRAWABLE_DECADES, v, np.nan)

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


def write_figures(drawn: dict, out_dir) -> list:
    """Write the figures `drawn` ({name: Figure}, as `figures` gives them) as PNG files to
    out_dir (created if missing); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in drawn.items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1])
    return paths


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
