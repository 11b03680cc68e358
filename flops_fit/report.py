"""Presentation of fitted scaling laws as text: the Chinchilla-style table, the summary,
the backtests and the learning-rate search's table (the figures are in plots.py).

Never fits anything and never imports the fit: the numbers and verdicts come stored on
the `ScalingLaws` it is given.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

# Default prediction budgets: the sweep's budgets plus this many powers of ten above the
# largest one (Chinchilla Table 3 extrapolates several decades past the sweep).
DEFAULT_EXTRA_DECADES = 3
EXCLUDED_ROWS_SHOWN = 12  # the summary lists this many excluded row numbers per reason, then "..."
LARGEST_DECADE = math.floor(math.log10(sys.float_info.max))  # 308: 10^308 is a float, 10^309 is not


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
    out = [f"WARNING: {w}" for w in laws.warnings]
    if out:
        out.append("")
    out += _overview_lines(laws)
    if laws.isoflop is not None:
        out += ["", *_isoflop_lines(laws)]
    if laws.parametric is not None:
        out += ["", *_parametric_lines(laws)]
    if laws.backtest is not None:
        out += ["", backtest_text(laws)]
    if laws.budget_backtest is not None:
        out += ["", budget_backtest_text(laws)]
    out += ["", *_excluded_lines(laws.excluded)]
    if laws.provenance:
        out += ["", "Provenance"]
        for key, value in laws.provenance.items():
            if key == "options":
                value = ", ".join(f"{name}={v!r}" for name, v in value.items())
            out.append(f"  {key}: {value}")
    return "\n".join(out)


def _overview_lines(laws) -> list:
    """What was fitted, how the intervals were made, which approaches ran and how they agree."""
    iso, par = laws.isoflop, laws.parametric
    pct = int(round(100 * laws.level))
    ci = (f"{pct}%; isoflop: t intervals from the scatter of the budgets' optima about each law; "
          + (f"parametric: bootstrap over runs, {laws.bootstrap} replicates, seed {laws.seed}"
             if laws.bootstrap else "parametric: none (bootstrap=0)"))
    out = [
        f"Scaling-law fit of {laws.source}" if laws.source else "Scaling-law fit",
        f"  points used: {len(laws.points)} in {laws.points['budget'].nunique()} FLOP groups; "
        f"excluded rows: {int((laws.excluded['kind'] == 'row').sum())}"
        + (f"; budgets in the power laws: {int(iso.optima['bracketed'].sum())} of {len(iso.optima)}"
           if iso is not None else ""),
        f"  intervals: {ci}",
        f"  FLOPs per parameter per token: {(iso or par).flops_per_param_token:.4g}",
    ]
    out += [f"  approach {line}" for line in laws.approaches]
    if laws.agreement:
        out.append(f"  approaches {laws.agreement}")
    out += [f"  note: {note}" for note in laws.notes]
    return out


def _isoflop_lines(laws) -> list:
    iso = laws.isoflop
    label = " -- UNRELIABLE intervals" if "isoflop" in laws.unreliable else ""
    return [
        f"IsoFLOP approach (optimum = {iso.optimum}; C = budget FLOPs){label}",
        f"  N_opt = k_N * C^a   a = {iso.a}   k_N = {iso.k_N}",
        f"  D_opt = k_D * C^b   b = {iso.b}   k_D = {iso.k_D}",
        f"  L_opt = E + k_L * C^c   E = {iso.E}   c = {iso.loss_exponent}   k_L = {iso.k_L:.4g}",
        "  (E fitted to the budgets' optimal losses)" if iso.floor == "fitted" else
        "  (E of the parametric law: too few budgets for a floor of their own)",
    ]


def _parametric_lines(laws) -> list:
    par = laws.parametric
    label = " -- UNRELIABLE intervals" if "parametric" in laws.unreliable else ""
    c_unit = f"C/{par.flops_per_param_token:.3g}"
    out = [
        f"Parametric approach L(N, D) = E + A/N^alpha + B/D^beta "
        f"({par.n_points} points, Huber delta={par.huber_delta:g} on log loss, objective {par.objective:.6g})"
        + (", alpha = beta" if par.tie_exponents else "") + label,
        *_huber_regime(par),
        f"  E = {par.E}   A = {par.A}   B = {par.B}",
        f"  alpha = {par.alpha}   beta = {par.beta}",
        f"  N_opt ~ C^a   a = {par.a}   (a = beta/(alpha+beta))",
        f"  D_opt ~ C^b   b = {par.b}   (b = alpha/(alpha+beta))",
        f"  G = (alpha A / (beta B))^(1/(alpha+beta)) = {par.G}  "
        f"(N_opt = G ({c_unit})^a, D_opt = ({c_unit})^b / G)",
    ]
    if par.bootstrap_dropped:
        out.append(f"  {par.bootstrap_dropped} of {laws.bootstrap} bootstrap replicate(s) failed and "
                   "were left out of the intervals")
    return out


def _excluded_lines(ex) -> list:
    """Excluded rows and budgets grouped by reason; at most EXCLUDED_ROWS_SHOWN row numbers each."""
    if not len(ex):
        return ["Excluded: nothing"]
    out = [f"Excluded ({len(ex)})"]
    for reason, grp in ex.groupby("reason", sort=False):
        if (grp["kind"] == "budget").all():
            which = ", ".join(f"{b:.3g}" for b in grp["budget"])
            out.append(f"  budget(s) {which} FLOPs: {reason}")
        else:
            rows = ", ".join(str(int(r)) for r in grp["row"].head(EXCLUDED_ROWS_SHOWN))
            more = " ..." if len(grp) > EXCLUDED_ROWS_SHOWN else ""
            out.append(f"  {len(grp)} row(s) [{rows}{more}]: {reason}")
    return out


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
