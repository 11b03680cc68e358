"""Leave the largest budget(s) out, predict them, and count how often the observed optimum
falls inside the interval, on published IsoFLOP data (data/README.md).

Two ways to score, both printed:
- "mean": `fit(where="budget < cut")`, then `laws.predict` at the held-out budgets: the
  interval of the law's mean (what a user who reads the table gets);
- "prediction": `fit(holdout_budgets=k)`: the interval of a new observation (the optimum
  that budget would show), which a correct law covers ~95 % of the time.
The "mean" way uses only `fit`, `predict` and `budget_optima`, so it runs unchanged on
older commits for a before/after comparison.

    python benchmarks/backtest.py [--bootstrap 200] [--holdout 1 2]
"""

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flops_fit import fit  # noqa: E402
from flops_fit.fitting import budget_optima  # noqa: E402

PORIAN_WHERE = 'dataset == "rw" and hparams == "tuned" and warmup == "short" and param_count == "standard"'
DATASETS = {  # name: (file, columns, where)
    "Chinchilla (Hoffmann et al. 2022 Fig. 4)": ("chinchilla_fig4_right_isoflop_slices_eythore.csv",
                                                  {"params": "n_params", "tokens": "n_tokens", "budget": "flops_label"},
                                                  None),
    "Llama 3 (Fig. 2)": ("llama3_fig2_isoflops_points_czech.csv",
                         {"flops": "compute_budget", "budget": "compute_budget", "tokens": "training_tokens",
                          "loss": "validation_loss"}, None),
    "Porian et al. 2024 (RefinedWeb, tuned)": ("porian2024_isoflop_points.csv",
                                               {"params": "n", "tokens": "t", "budget": "flops"}, PORIAN_WHERE),
}


def mean_rows(path, columns, where, k, bootstrap):
    """Old-style scoring: fit the lower budgets, read `predict`'s interval of the mean."""
    full = fit(path, columns=columns, where=where, bootstrap=0, approach="isoflop")
    budgets = np.sort(full.points["budget"].unique())
    cut = budgets[-k]
    wheres = [f"budget < {float(cut) * (1 - 1e-9)!r}"] + ([where] if where else [])
    laws = fit(path, columns=columns, where=wheres, bootstrap=bootstrap, seed=0)
    held = full.points[full.points["budget"] >= cut]
    obs = budget_optima(held, "parabola", 6.0)
    obs = obs[obs["bracketed"]]
    pred = laws.predict(obs["budget"].to_numpy())
    rows = []
    for r in pred.itertuples():
        o = obs[np.isclose(obs["budget"], r.flops, rtol=1e-9)].iloc[0]
        for q in ("params", "loss"):
            value, lo, hi, seen = getattr(r, q), getattr(r, f"{q}_low"), getattr(r, f"{q}_high"), o[f"{q}_opt"]
            rows.append((r.approach, r.flops, q, seen, value, lo, hi, value / seen - 1, lo <= seen <= hi, "mean"))
    return rows


def prediction_rows(path, columns, where, k, bootstrap):
    laws = fit(path, columns=columns, where=where, holdout_budgets=k, bootstrap=bootstrap, seed=0)
    return [tuple(r) for r in laws.budget_backtest.itertuples(index=False)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--holdout", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    new = "holdout_budgets" in inspect.signature(fit).parameters
    rows = []
    for name, (file, columns, where) in DATASETS.items():
        path = ROOT / "data" / file
        for k in args.holdout:
            ways = [("mean", mean_rows)] + ([("prediction", prediction_rows)] if new else [])
            for way, make in ways:
                for r in make(path, columns, where, k, args.bootstrap):
                    rows.append((name, k, way) + tuple(r[:9]))
    table = pd.DataFrame(rows, columns=["data", "held", "interval", "approach", "budget", "quantity", "observed",
                                        "predicted", "low", "high", "relative_error", "inside"])
    print("| data | budgets held out | interval | approach | FLOPs | quantity | error | inside |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table.itertuples():
        print(f"| {r.data} | {r.held} | {r.interval} | {r.approach} | {r.budget:.3g} "
              f"| {'N_opt' if r.quantity == 'params' else 'loss'} | {r.relative_error:+.1%} | {'yes' if r.inside else 'no'} |")
    print("\n| interval | approach | quantity | inside / scored | median abs error |")
    print("|---|---|---|---|---|")
    for (way, approach, q), g in table.groupby(["interval", "approach", "quantity"]):
        print(f"| {way} | {approach} | {'N_opt' if q == 'params' else 'loss'} | {int(g['inside'].sum())} / {len(g)} "
              f"| {g['relative_error'].abs().median():.1%} |")


if __name__ == "__main__":
    main()
