"""Search stopping rule: bias and spread of the N_opt exponent a that bracket-seeking
sweeps of a known law give, for each stopping rule, against the points they train.

Each simulated sweep runs `BracketSearch` over five budgets (1e12 to 1e14 FLOPs) of a
GPT-like dial (N = 768 s^3), two trial slots, with held-out losses drawn from Chinchilla's
law (Hoffmann et al. 2022, eq. 10) times log-normal noise; a is the slope of the OLS line
of ln N_opt on ln C through the budgets the fit would use (vertex inside), compared with
the law's a = beta / (alpha + beta). Rules: the fit's rule alone (one size each side of
the vertex), two sizes each side, and vertex standard-error targets (natural log of N).
Appends a section to benchmarks/RESULTS.md (unless --no-write).

    python benchmarks/search_bias.py [--sweeps 300] [--priors 20,2,5,80,200] [--targets 0.15,0.1,0.07,0.05]
                                     [--noise 0.01] [--seed 0] [--no-write]
"""

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flops_fit.plan import SweepPlan, SweepPoint, point_id, steps_for  # noqa: E402
from flops_fit.search import BracketSearch  # noqa: E402
from flops_fit.valley import MIN_SIZES_EACH_SIDE, VERTEX_SE_TARGET  # noqa: E402

# Chinchilla's fit (Hoffmann et al. 2022, eq. 10): N_opt = G (C/6)^a with a = 0.452.
LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
A_OPT = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
BUDGETS = [1e12, 3e12, 1e13, 3e13, 1e14]  # FLOPs
BATCH_TOKENS = 1024
DIAL = range(1, 41)
SIZES_PER_BUDGET = 5  # planned sizes per budget, log-spaced over SIZE_SPREAD^+-1 around the prior
SIZE_SPREAD = 4.0
CONCURRENCY = 2  # trial slots: a decision sees the results of all but the running points
MIN_BUDGETS = 3  # the fit's minimum for a line with a residual


def params_of(size):
    """A GPT-like dial: N grows as the cube of the size."""
    return 768 * size**3


SIZES = {s: (params_of(s), 6.0 * params_of(s)) for s in DIAL}


def make_plan(tokens_per_param):
    """The dial values nearest a log grid around the prior optimum sqrt(C / (6 tokens_per_param)),
    as plan_sweep picks them; 6N FLOPs, whole steps."""
    points = []
    for b in BUDGETS:
        n_star = math.sqrt(b / (6 * tokens_per_param))
        chosen = []
        for x in np.linspace(-1, 1, SIZES_PER_BUDGET):
            target = math.log(n_star) + x * math.log(SIZE_SPREAD)
            best = min(DIAL, key=lambda s: abs(math.log(params_of(s)) - target))
            if best not in chosen:
                chosen.append(best)
        for s in sorted(chosen):
            params, fpt = SIZES[s]
            steps = steps_for(b, fpt, BATCH_TOKENS)
            points.append(SweepPoint(point_id(b, s), b, s, params, fpt, steps, steps * BATCH_TOKENS,
                                     fpt * steps * BATCH_TOKENS))
    return SweepPlan(tuple(points), BATCH_TOKENS, "non_embedding", "6N")


def law_loss(params, tokens):
    return LAW["E"] + LAW["A"] / params ** LAW["alpha"] + LAW["B"] / tokens ** LAW["beta"]


def run(search, noise, rng):
    """Drive the search as Tune would: CONCURRENCY slots, the oldest running point ends first."""
    running = []
    while True:
        while len(running) < CONCURRENCY:
            p = search.next_point()
            if p is None:
                break
            running.append(p)
        if not running:
            return
        p = running.pop(0)
        search.record(p["point_id"], "ok", law_loss(p["params"], p["tokens"]) * math.exp(noise * rng.standard_normal()))


def exponent(search):
    """Slope of ln N_opt on ln C through the budgets the fit would use; NaN with too few."""
    optima = {}
    for b in BUDGETS:
        v = search.valley(b)
        if v.fit_bracketed:
            optima[b] = v.params_opt
    if len(optima) < MIN_BUDGETS:
        return math.nan, len(optima)
    return float(np.polyfit(np.log(list(optima)), np.log(list(optima.values())), 1)[0]), len(optima)


def simulate(prior, target, each_side, sweeps, noise, seed):
    plan = make_plan(prior)
    planned_flops = sum(p.budget for p in plan.points)
    a, points, used, flops = [], [], [], []
    for i in range(sweeps):
        rng = np.random.default_rng([seed, i])  # one stream per sweep, the same for every rule
        search = BracketSearch(plan, SIZES, vertex_se_target=target, min_sizes_each_side=each_side)
        run(search, noise, rng)
        slope, n = exponent(search)
        a.append(slope)
        used.append(n)
        points.append(len(search.results))
        flops.append(sum(p["budget"] for p in search.proposed.values()) / planned_flops)
    a = np.array(a)
    ok = a[np.isfinite(a)]
    return dict(bias=ok.mean() - A_OPT, mc_se=ok.std(ddof=1) / math.sqrt(ok.size), sd=ok.std(ddof=1),
                points=float(np.mean(points)), flops=float(np.mean(flops)), used=float(np.mean(used)),
                fitted=ok.size, sweeps=sweeps)


def rule_name(target, each_side):
    if math.isinf(target):
        return f"{each_side} size{'s' if each_side > 1 else ''} each side"
    return f"vertex SE <= {target:g}" + ("" if each_side == MIN_SIZES_EACH_SIDE else f", {each_side} each side")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=300, help="simulated sweeps per (prior, rule)")
    parser.add_argument("--priors", default="20,2,5,80,200", help="prior tokens per parameter of the plans")
    parser.add_argument("--targets", default="0.15,0.1,0.07,0.05", help="vertex SE targets (natural log of N)")
    parser.add_argument("--noise", type=float, default=0.01, help="sd of the log-normal loss noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    priors = [float(x) for x in args.priors.split(",")]
    rules = [(math.inf, 1), (math.inf, 2)] + [(float(t), MIN_SIZES_EACH_SIDE) for t in args.targets.split(",")]
    t0 = time.perf_counter()
    rows = []
    for prior in priors:
        for target, each_side in rules:
            r = simulate(prior, target, each_side, args.sweeps, args.noise, args.seed)
            rows.append((prior, rule_name(target, each_side), r))
            print(f"prior {prior:g} | {rule_name(target, each_side)} | bias {r['bias']:+.4f} +- {r['mc_se']:.4f} "
                  f"| sd {r['sd']:.4f} | points {r['points']:.1f} | compute {r['flops']:.2f} "
                  f"| budgets used {r['used']:.2f} "
                  f"| fitted {r['fitted']}/{r['sweeps']}", flush=True)
    elapsed = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "flops_fit", "benchmarks/search_bias.py"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/search_bias.py" + "".join(
        f" --{k} {v}" for k, v in [("sweeps", args.sweeps), ("priors", args.priors), ("targets", args.targets),
                                   ("noise", args.noise), ("seed", args.seed)])
    lines = [
        f"\n## Search stopping rule ({date.today().isoformat()})\n",
        f"Command: `{command}`  ",
        f"Commit: {commit}{' with uncommitted changes' if dirty else ''}; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}; {elapsed:.0f} s  ",
        f"Law: Chinchilla (Hoffmann et al. 2022, eq. 10), true a = {A_OPT:.4f}; loss x exp({args.noise:g} z); "
        f"budgets {', '.join(f'{b:.0e}' for b in BUDGETS)} FLOPs; {SIZES_PER_BUDGET} planned sizes per budget "
        f"over x{SIZE_SPREAD ** 2:g} in N; dial N = 768 s^3; {CONCURRENCY} trial slots; default limits "
        "(4 sizes added per budget). a: OLS slope of ln N_opt on ln C through the budgets with their vertex "
        "inside. Bias: mean a - true a, +- its Monte-Carlo standard error; sd: spread of a over sweeps; "
        "points: points trained per sweep; compute: FLOPs trained / the plan's FLOPs; "
        "budgets: budgets the fit uses per sweep (of 5). Sweeps with "
        f"fewer than {MIN_BUDGETS} such budgets are left out of a (fitted column).\n",
        "| prior tokens/param | rule | bias of a | sd of a | points | compute | budgets | fitted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for prior, name, r in rows:
        lines.append(f"| {prior:g} | {name} | {r['bias']:+.4f} +- {r['mc_se']:.4f} | {r['sd']:.4f} | "
                     f"{r['points']:.1f} | {r['flops']:.2f} | {r['used']:.2f} | {r['fitted']}/{r['sweeps']} |")
    lines.append(f"\nThe search's default: vertex SE <= {VERTEX_SE_TARGET:g}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with (REPO / "benchmarks" / "RESULTS.md").open("a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
