"""Calibration of the IsoFLOP intervals: simulated sweeps from a known law.

Thousands of sweeps per design, vectorised: Chinchilla's law (Hoffmann et al. 2022,
Approach 3 fit: E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28) with 1 % log-normal loss
noise, 5 budgets from 1e18 to 1e20 FLOPs, 3, 4, 5 or 7 sizes per budget spanning +-0.5
decades around a centre off the true optimum by up to 0.15 decades. Each budget's optimum
is the vertex of its parabola in ln N (as `valley_vertex`), and the laws and intervals are
those of `flops_fit.fitting.regression`, which `fit` uses. The nominal 95 % intervals of a
and of the loss at the largest budget must cover the truth 90-98.5 % of the time, the 80 %
intervals 74-86 %.
"""

import numpy as np
import pytest

from flops_fit.fitting.regression import floor_fit, floor_interval, line_fit, t_quantile

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
A_TRUE = BETA / (ALPHA + BETA)
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
BUDGETS = np.logspace(18, 20, 5)
SWEEPS = 1000  # per design: the 80 % band (74-86 %) is then > 4.5 standard errors wide
NOISE = 0.01
HALF_SPAN_DECADES = 0.5
CENTRE_OFF_DECADES = 0.15
BOUNDS = {0.95: (0.90, 0.985), 0.80: (0.74, 0.86)}


def n_opt(flops):
    return G * (flops / 6) ** A_TRUE


def loss_law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def simulate(sizes, seed):
    """(ln vertex N, vertex loss), each (SWEEPS, budgets), of simulated sweeps."""
    rng = np.random.default_rng(seed)
    off = rng.uniform(-CENTRE_OFF_DECADES, CENTRE_OFF_DECADES, (SWEEPS, 1)) * np.log(10)
    grid = np.linspace(-HALF_SPAN_DECADES, HALF_SPAN_DECADES, sizes)[None, :] * np.log(10)
    log_n, loss = np.empty((SWEEPS, BUDGETS.size)), np.empty((SWEEPS, BUDGETS.size))
    for j, c in enumerate(BUDGETS):
        x = np.log(n_opt(c)) + off + grid
        y = loss_law(np.exp(x), c / (6 * np.exp(x))) * np.exp(NOISE * rng.standard_normal(x.shape))
        xc = x - x.mean(1, keepdims=True)
        v = np.stack([np.ones_like(xc), xc, xc**2], -1)
        c0, c1, c2 = np.linalg.solve(np.einsum("rni,rnj->rij", v, v), np.einsum("rni,rn->ri", v, y)[..., None])[..., 0].T
        xv = -c1 / (2 * c2)
        log_n[:, j] = xv + x.mean(1)
        loss[:, j] = c0 + c1 * xv + c2 * xv * xv
    return log_n, loss


def a_coverage(log_n, level):
    """Share of sweeps whose `level` interval of the N_opt exponent covers the true a."""
    fit = line_fit(np.log(BUDGETS), log_n)
    half = t_quantile(level, fit["dof"]) * fit["s"] / np.sqrt(fit["sxx"])
    return np.mean(np.abs(fit["slope"] - A_TRUE) <= half)


def loss_coverage(loss, level):
    """Share of sweeps whose `level` interval of the loss at the largest budget covers the
    true compute-optimal loss there; also the predicted losses (positive, nats per token)."""
    top = BUDGETS[-1]
    truth = loss_law(n_opt(top), top / (6 * n_opt(top)))
    value, low_end, high_end = (v[:, 0] for v in floor_interval(floor_fit(np.log(BUDGETS), loss),
                                                                  np.log(BUDGETS[-1:]), level))
    return np.mean((low_end <= truth) & (truth <= high_end)), value


@pytest.fixture(scope="module", params=[3, 4, 5, 7], ids=lambda n: f"{n}-sizes")
def sweeps(request):
    return simulate(request.param, seed=request.param)


@pytest.mark.parametrize("level", sorted(BOUNDS))
def test_interval_of_the_n_opt_exponent_covers_the_truth(sweeps, level):
    covered = a_coverage(sweeps[0], level)
    low, high = BOUNDS[level]
    assert low <= covered <= high, f"{covered:.3f} of nominal {level}"


@pytest.mark.parametrize("level", sorted(BOUNDS))
def test_interval_of_the_loss_at_the_largest_budget_covers_the_truth(sweeps, level):
    covered, value = loss_coverage(sweeps[1], level)
    low, high = BOUNDS[level]
    assert low <= covered <= high, f"{covered:.3f} of nominal {level}"
    assert np.all(value > 0)


def coverage_table():
    """The coverage of every design and level as a markdown table (benchmarks/RESULTS.md)."""
    lines = ["| sizes per budget | a, 95 % | a, 80 % | loss at the largest budget, 95 % | same, 80 % |",
             "|---|---|---|---|---|"]
    for sizes in (3, 4, 5, 7):
        log_n, loss = simulate(sizes, seed=sizes)
        cells = [a_coverage(log_n, level) for level in (0.95, 0.80)]
        cells += [loss_coverage(loss, level)[0] for level in (0.95, 0.80)]
        lines.append(f"| {sizes} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_coverage.py
    print(coverage_table())
