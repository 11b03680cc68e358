"""How often the approaches' agreement test cries wolf on clean data.

Sweeps of Chinchilla's law (Hoffmann et al. 2022: E=1.69, A=406.4, B=410.7, alpha=0.34,
beta=0.28) with 1 % log-normal loss noise, 5 budgets 1e18-1e20 FLOPs x 5 sizes over
+-0.5 decades around a centre off the optimum by up to 0.15 decades, each fitted with both
approaches; a "disagree" verdict is a false alarm (the law is the same). Goal: < 5 %.

    python benchmarks/agreement_false_alarms.py [--sweeps 200] [--bootstrap 40]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flops_fit import fit  # noqa: E402

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def sweep(rng, budgets=np.logspace(18, 20, 5), sizes=5, noise=0.01):
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    rows = []
    for c in budgets:
        centre = g * (c / 6) ** (BETA / (ALPHA + BETA)) * 10 ** rng.uniform(-0.15, 0.15)
        for x in np.linspace(-0.5, 0.5, sizes):
            n = centre * 10**x
            d = c / (6 * n)
            loss = (E + A / n**ALPHA + B / d**BETA) * np.exp(noise * rng.standard_normal())
            rows.append(dict(budget=c, params=n, tokens=d, loss=loss))
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweeps", type=int, default=200)
    p.add_argument("--bootstrap", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    alarms = 0
    for s in range(args.sweeps):
        alarms += fit(sweep(rng), bootstrap=args.bootstrap, seed=s).agreement.verdict == "disagree"
        print(f"\r{s + 1}/{args.sweeps} sweeps, {alarms} false alarm(s)", end="", flush=True)
    share = alarms / args.sweeps
    print(f"\nfalse alarms: {alarms} of {args.sweeps} ({share:.1%}); goal < 5 %")
    return 0 if share < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
