"""What the data cannot tell, beyond what the fit shows by itself: parameters of L(N, D)
the rows do not identify, a law with no finite compute-optimal allocation, IsoFLOP optima
snapped to the sampled sizes, checkpoints fitted as final losses, and data repeated
beyond a few epochs. Each is a warning line (`laws.warnings`, top of the summary); none
changes a fit."""

from __future__ import annotations

import math

import numpy as np

from flops_fit.law import huber_lse_objective

# A and B trade off against alpha and beta (the rows pin down A/N^alpha near their sizes,
# not A), so their bootstrap intervals span up to a decade even on well-measured published
# sets (Epoch's refit of Chinchilla: B within a factor of about 8); an interval spanning
# more than two decades (high / low) leaves the parameter unknown to the rows.
SCALE_MAX_SPREAD = 100.0
# E is an additive loss in nats: an interval whose high end is more than twice its low end
# cannot say whether half the loss of the largest runs is irreducible (published sets pin
# E to within ~10%).
E_MAX_SPREAD = 2.0
# An interval of alpha or beta wider than this leaves a = beta/(alpha+beta) uncertain by
# about +-0.1 for Chinchilla-like exponents (da/dbeta = alpha/(alpha+beta)^2 ~ 0.7), the
# size of the gap between Kaplan et al. 2020 (a ~ 0.73) and Hoffmann et al. 2022 (~ 0.5).
EXPONENT_MAX_WIDTH = 0.3
# Two local optima of the start grid whose objectives differ by less than this share are
# equally good to the data: resampling the rows moves the summed objective by far more
# (its relative spread is of order 1/sqrt(rows), 6% at 240 rows).
OBJECTIVE_TIE_RTOL = 0.01
# A finished run's tokens match its planned tokens to within a few steps' worth; a row
# further below them is a checkpoint on the way.
CHECKPOINT_RTOL = 0.01
# Muennighoff et al. 2023 (arXiv:2305.16264, abstract): up to 4 epochs of repeated data
# change the loss negligibly against unique data; with more repetition the value of more
# compute decays towards zero, so the single-epoch L(N, D) overstates what D tokens buy.
MAX_USEFUL_EPOCHS = 4.0


def limit_warnings(points, iso, par):
    """Warnings of what these rows cannot tell (see the module docstring)."""
    out = _checkpoints(points) + _repeated(points)
    if iso is not None and iso.optimum == "lowest":
        out += _snapped(points)
    if par is not None:
        out += _unidentified(par) + _tied_optima(par, points) + _no_allocation(par)
    return out


def _checkpoints(points):
    """Rows below their run's planned tokens (max_tokens) or its last row (run)."""
    tokens = points["tokens"].to_numpy(float)
    if "max_tokens" in points.columns:
        planned, source = points["max_tokens"].to_numpy(float), "their run's planned max_tokens"
        keep = "where='tokens >= max_tokens'"
    elif "run" in points.columns:
        planned, source = points.groupby("run")["tokens"].transform("max").to_numpy(float), "their run's last row"
        keep = "a where= on a column that marks it"
    else:
        return []
    with np.errstate(invalid="ignore"):
        early = tokens < planned * (1 - CHECKPOINT_RTOL)
    if not early.any():
        return []
    return [f"{int(early.sum())} of {early.size} rows have fewer tokens than {source}: they are "
            "intermediate checkpoints, fitted as if they were final losses. A checkpoint part-way "
            "through a learning-rate schedule sits above the loss of a run planned for that many "
            "tokens (Hoffmann et al. 2022 Sec. 3.1, Fig. A1), which biases the law; keep each run's "
            f"final row ({keep})"]


def _repeated(points):
    """Rows that saw their unique tokens more than MAX_USEFUL_EPOCHS times."""
    if "epochs" in points.columns:
        epochs = points["epochs"].to_numpy(float)
    elif "unique_tokens" in points.columns:
        with np.errstate(divide="ignore", invalid="ignore"):
            epochs = points["tokens"].to_numpy(float) / points["unique_tokens"].to_numpy(float)
    else:
        return []
    with np.errstate(invalid="ignore"):
        many = epochs > MAX_USEFUL_EPOCHS
    if not many.any():
        return []
    return [f"{int(many.sum())} of {many.size} rows repeat their data more than {MAX_USEFUL_EPOCHS:g} "
            f"times (up to {np.nanmax(epochs[many]):.3g} epochs) and were fitted with the single-epoch "
            "L(N, D): repeated tokens are worth rapidly less beyond ~4 epochs (Muennighoff et al. 2023), "
            f"so the law overstates what those tokens buy; fit them apart (e.g. where='epochs <= "
            f"{MAX_USEFUL_EPOCHS:g}') or with a data-constrained law"]


def _snapped(points):
    """optimum='lowest' puts each budget's N_opt on one of its sampled sizes."""
    steps = []
    for _, grp in points.groupby("budget"):
        sizes = np.unique(np.log10(grp["params"].to_numpy(float)))
        if sizes.size > 1:
            steps.append(np.median(np.diff(sizes)))
    spacing = f" (median spacing {np.median(steps):.2g} decades of N)" if steps else ""
    return [f"optimum='lowest': each budget's N_opt is one of its sampled sizes{spacing}, so N_opt and "
            "the exponents a, b move in steps of the grid, not with the data between them; "
            "optimum='parabola' interpolates between sizes"]


def _unidentified(par):
    """Parameters whose bootstrap interval spans orders of magnitude (or a wide exponent range)."""
    out = []
    for name, spread in (("E", E_MAX_SPREAD), ("A", SCALE_MAX_SPREAD), ("B", SCALE_MAX_SPREAD)):
        e = getattr(par, name)
        if np.isfinite(e.low) and np.isfinite(e.high) and not e.high <= spread * e.low:
            out.append(f"parametric {name} is not identified by these rows: its bootstrap interval "
                       f"[{e.low:.3g}, {e.high:.3g}] spans more than a factor {spread:g}")
    for name in ("alpha", "beta"):
        e = getattr(par, name)
        if np.isfinite(e.low) and np.isfinite(e.high) and e.high - e.low > EXPONENT_MAX_WIDTH:
            out.append(f"parametric {name} is not identified by these rows: its bootstrap interval "
                       f"[{e.low:.3g}, {e.high:.3g}] is wider than {EXPONENT_MAX_WIDTH:g}")
    return out


def _tied_optima(par, points):
    """Distinct local optima of the start grid, equally good, with parameters far apart."""
    local = par.local_optima
    if local is None or len(local) < 2:
        return []
    ln_n, ln_d, ln_l = (np.log(points[c].to_numpy(float)) for c in ("params", "tokens", "loss"))
    with np.errstate(over="ignore", invalid="ignore"):
        f = huber_lse_objective(local, ln_n, ln_d, ln_l, np.ones_like(ln_n), par.huber_delta)[0]
    best = int(np.nanargmin(f)) if np.isfinite(f).any() else 0
    for j in range(len(local)):
        tie = j != best and abs(f[j] - f[best]) <= OBJECTIVE_TIE_RTOL * abs(f[best])
        far = _far_apart(local[best], local[j])
        if tie and far:
            return [f"parametric law not identified: two local optima fit these rows equally well "
                    f"(objectives {f[best]:.4g} and {f[j]:.4g}) with {far}; the reported one is the "
                    "lower, the data cannot choose between them"]
    return []


def _far_apart(x, y):
    """'' or what differs between two optima (ln A, ln B, ln E, alpha, beta) by more than
    an unidentified interval would span."""
    for j, name, spread in ((0, "A", SCALE_MAX_SPREAD), (1, "B", SCALE_MAX_SPREAD), (2, "E", E_MAX_SPREAD)):
        if abs(x[j] - y[j]) > math.log(spread):
            return f"{name} = {math.exp(min(x[j], 700)):.3g} vs {math.exp(min(y[j], 700)):.3g}"
    for j, name in ((3, "alpha"), (4, "beta")):
        if abs(x[j] - y[j]) > EXPONENT_MAX_WIDTH:
            return f"{name} = {x[j]:.3g} vs {y[j]:.3g}"
    return ""


def _no_allocation(par):
    """A law whose G overflows (exponents near zero) gives no compute-optimal N or D."""
    if np.isfinite(par.G.value) and par.G.value > 0:
        return []
    return [f"the parametric law has no finite compute-optimal allocation (alpha + beta = "
            f"{par.alpha.value + par.beta.value:.3g}, so G = (alpha A / (beta B))^(1/(alpha+beta)) is "
            "beyond a float): its predicted N_opt, D_opt and loss are NaN"]
