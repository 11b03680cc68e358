"""Fit speed: full-grid parametric fit (4,500 starts evaluated in chunks, the best 5
polished by L-BFGS-B) and 1,000 bootstrap refits vs a straightforward per-start scipy
loop (4,500 x L-BFGS-B, numeric gradients), on the 240 Epoch points (Besiroglu et al.
2024). Appends the numbers to benchmarks/RESULTS.md.

    python benchmarks/fit_speed.py [--starts K]   (K < 4500 times a subset and extrapolates)
"""

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flops_fit import fit  # noqa: E402
from flops_fit.law import HUBER_DELTA  # noqa: E402
from flops_fit.optimize import fit_parametric_params, start_grid  # noqa: E402

DATA = REPO / "data" / "epoch_chinchilla_fig4_svg_extracted.csv"
BOOTSTRAP = 1000
REPEATS = 3


def naive_objective(theta, log_n, log_d, log_loss):
    """What a user writes first: scalar objective, gradients left to finite differences."""
    a, b, e, alpha, beta = theta
    pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    r = pred - log_loss
    return np.sum(np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2,
                           HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=4500)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    d = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    log_n = np.log(d["Model Size"].to_numpy())
    log_d = np.log(d["Training FLOP"].to_numpy() / (6 * d["Model Size"].to_numpy()))
    log_l = np.log(d["loss"].to_numpy())

    fit_parametric_params(log_n, log_d, log_l)  # warm-up (imports, caches)
    # Best of REPEATS: the machine may be shared, and a busy neighbour only ever adds time.
    t_grid = np.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        theta, f_ours, _ = fit_parametric_params(log_n, log_d, log_l)
        t_grid = min(t_grid, time.perf_counter() - t0)

    columns = {"params": "Model Size", "flops": "Training FLOP"}
    t_plain = t_total = np.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fit(d, columns=columns, bootstrap=0)
        t_plain = min(t_plain, time.perf_counter() - t0)
        t0 = time.perf_counter()
        laws = fit(d, columns=columns, bootstrap=BOOTSTRAP, seed=0)
        t_total = min(t_total, time.perf_counter() - t0)
    t_boot = t_total - t_plain

    grid = start_grid()[: args.starts]
    t0 = time.perf_counter()
    best = np.inf
    # One BLAS thread, as flops_fit's own polish runs: with OpenBLAS's pool, L-BFGS-B on 5
    # parameters spin-waits on a busy machine, which would inflate the loop's time.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in grid:
            res = minimize(naive_objective, start, args=(log_n, log_d, log_l), method="L-BFGS-B")
            best = min(best, res.fun)
    t_naive = (time.perf_counter() - t0) * (4500 / len(grid))

    p = laws.parametric
    lines = [
        f"\n## Parametric fit speed ({date.today().isoformat()})\n",
        f"Command: `python benchmarks/fit_speed.py{'' if args.starts == 4500 else f' --starts {args.starts}'}`  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"load average {load_at_start:.1f} at the start  ",
        "Data: Epoch digitised Chinchilla points, 240 after dropping the 5 highest losses.\n",
        "| what | seconds |",
        "|---|---|",
        f"| flops_fit full-grid fit (4,500 starts evaluated, best 5 polished by L-BFGS-B; best of {REPEATS}) | {t_grid:.2f} |",
        f"| flops_fit {BOOTSTRAP} bootstrap refits (isoflop + parametric; best of {REPEATS} fits with and without) | {t_boot:.2f} |",
        f"| per-start scipy L-BFGS-B loop, numeric gradients, 4,500 starts"
        f"{'' if args.starts == 4500 else f' (timed {args.starts}, extrapolated x{4500 / args.starts:.1f})'} | {t_naive:.1f} |",
        "",
        f"Speed-up of the full-grid fit: **{t_naive / t_grid:.0f}x**. Best objective: ours "
        f"{f_ours:.10g}, loop {best:.10g}. Fit: E={p.E.value:.4f}, A={p.A.value:.1f}, "
        f"B={p.B.value:.0f}, alpha={p.alpha.value:.4f}, beta={p.beta.value:.4f} "
        "(published 1.8172, 477.8, 2143, 0.3473, 0.3672).",
    ]
    text = "\n".join(lines) + "\n"
    results = REPO / "benchmarks" / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmarks\n\nMeasured numbers; each run appends a section.\n")
    with results.open("a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
