"""Fitting engine: published reproduction, recovery of known laws, bad input."""

import math
import sys

import numpy as np
import pandas as pd
import pytest

from flops_fit import FitError, ScalingLaws, fit
from flops_fit.law import huber_lse_objective
from flops_fit.optimize import start_grid

EPOCH_FILE = "epoch_chinchilla_fig4_svg_extracted.csv"
EPOCH_COLUMNS = {"params": "Model Size", "flops": "Training FLOP"}
# Besiroglu et al. 2024 (arXiv:2404.10102) Table 1 / README of shared/data.
EPOCH_PUBLISHED = dict(E=1.8172, A=477.8, B=2143.0, alpha=0.3473, beta=0.3672)
EPOCH_CI = dict(E=(1.769, 1.871), alpha=(0.317, 0.373), beta=(0.331, 0.415))
RTOL_TIGHT = 0.01  # E, alpha, beta
RTOL_LOOSE = 0.05  # A, B (weakly identified)
CI_ENDPOINT_ATOL = 0.01  # bootstrap endpoints vary with the resamples drawn


@pytest.fixture(scope="module")
def epoch_laws():
    from tests.conftest import DATA_DIR

    path = DATA_DIR / EPOCH_FILE
    return fit(path, columns=EPOCH_COLUMNS, drop_highest_loss=5, bootstrap=300, seed=0)


def test_reproduces_besiroglu_2024_parametric_fit(epoch_laws):
    p = epoch_laws.parametric
    assert p.n_points == 240
    for name in ("E", "alpha", "beta"):
        assert getattr(p, name).value == pytest.approx(EPOCH_PUBLISHED[name], rel=RTOL_TIGHT), name
    for name in ("A", "B"):
        assert getattr(p, name).value == pytest.approx(EPOCH_PUBLISHED[name], rel=RTOL_LOOSE), name


def test_epoch_bootstrap_intervals_match_published(epoch_laws):
    p = epoch_laws.parametric
    for name, (lo, hi) in EPOCH_CI.items():
        est = getattr(p, name)
        assert est.low == pytest.approx(lo, abs=CI_ENDPOINT_ATOL * max(1, lo)), name
        assert est.high == pytest.approx(hi, abs=CI_ENDPOINT_ATOL * max(1, hi)), name


def test_epoch_exclusions_name_the_rule(epoch_laws):
    ex = epoch_laws.excluded
    dropped = ex[ex["reason"].str.contains("drop_highest_loss")]
    assert len(dropped) == 5
    assert dropped["loss"].min() >= epoch_laws.points["loss"].max()


def test_grid_fit_reaches_the_best_minimum_of_individual_runs(data_dir):
    """Spot check: scipy L-BFGS-B from a sample of grid starts never beats the fit."""
    from scipy.optimize import minimize

    d = pd.read_csv(data_dir / EPOCH_FILE).sort_values("loss").iloc[:-5]
    ln = np.log(d["Model Size"].to_numpy())
    ld = np.log(d["Training FLOP"].to_numpy() / (6 * d["Model Size"].to_numpy()))
    ll = np.log(d["loss"].to_numpy())
    w = np.ones_like(ln)
    laws = fit(d, columns=EPOCH_COLUMNS, bootstrap=0)
    grid = start_grid()
    rng = np.random.default_rng(1)
    best = min(
        minimize(lambda t: tuple(v[0] for v in huber_lse_objective(t[None], ln, ld, ll, w)),
                 grid[i], jac=True, method="L-BFGS-B").fun
        for i in rng.choice(len(grid), 40, replace=False)
    )
    assert laws.parametric.objective <= best * (1 + 1e-9)


def test_analytic_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    ln, ld = rng.uniform(18, 23, 30), rng.uniform(20, 25, 30)
    ll = np.log(2 + 400 / np.exp(ln) ** 0.3 + 1000 / np.exp(ld) ** 0.3) + rng.normal(0, 0.01, 30)
    w = rng.integers(0, 3, 30).astype(float)
    theta = np.array([[5.5, 7.0, 0.6, 0.31, 0.29]])
    f, g = huber_lse_objective(theta, ln, ld, ll, w)
    step = 1e-6
    for j in range(5):
        tp, tm = theta.copy(), theta.copy()
        tp[0, j] += step
        tm[0, j] -= step
        fd = (huber_lse_objective(tp, ln, ld, ll, w)[0] - huber_lse_objective(tm, ln, ld, ll, w)[0]) / (2 * step)
        assert g[0, j] == pytest.approx(fd[0], rel=1e-4, abs=1e-10)


@pytest.mark.parametrize("optimum", ["parabola", "lowest"])
def test_both_approaches_recover_generating_exponents(sweep, true_law, optimum):
    a_true = true_law["beta"] / (true_law["alpha"] + true_law["beta"])
    b_true = 1 - a_true
    laws = fit(sweep, optimum=optimum, bootstrap=200, seed=3, approach="auto" if optimum == "parabola" else "isoflop")
    iso = laws.isoflop
    assert iso.a.low <= a_true <= iso.a.high, iso.a
    assert iso.b.low <= b_true <= iso.b.high, iso.b
    if laws.parametric is not None:
        par = laws.parametric
        assert par.a.low <= a_true <= par.a.high, par.a
        assert par.b.low <= b_true <= par.b.high, par.b
        assert par.alpha.low <= true_law["alpha"] <= par.alpha.high
        assert par.beta.low <= true_law["beta"] <= par.beta.high
        assert par.E.low <= true_law["E"] <= par.E.high


def test_prediction_matches_generating_law(sweep, true_law):
    laws = fit(sweep, bootstrap=100, seed=1)
    pred = laws.predict(1e22)  # one decade past the sweep
    from flops_fit.law import compute_optimal_allocation

    n_true, d_true = compute_optimal_allocation(1e22, true_law["A"], true_law["B"],
                                                true_law["alpha"], true_law["beta"])
    for row in pred.itertuples():
        assert row.params_low <= n_true <= row.params_high, row.approach
        assert row.tokens == pytest.approx(1e22 / (6 * row.params), rel=1e-9)


def test_unbracketed_budget_is_excluded_not_used(sweep):
    # Keep only sizes below the optimum at the largest budget: its parabola vertex lies
    # outside the sampled sizes (or the lowest loss sits on the edge).
    top = sweep["budget"].max()
    grp = sweep[sweep["budget"] == top]
    cut = grp["params"].sort_values().iloc[3]
    data = sweep[(sweep["budget"] != top) | (sweep["params"] <= cut)]
    for optimum in ("parabola", "lowest"):
        laws = fit(data, optimum=optimum, bootstrap=0, approach="isoflop")
        row = laws.isoflop.optima.set_index("budget").loc[top]
        assert not row["bracketed"]
        ex = laws.excluded
        assert ((ex["kind"] == "budget") & (ex["budget"] == top)
                & ex["reason"].str.contains("not bracketed")).any()


def test_failed_rows_and_inf_loss_are_excluded_with_reason(sweep):
    data = sweep.copy()
    data["error"] = ""
    data.loc[0, ["status", "error"]] = ["diverged", "loss became NaN at step 120"]
    data.loc[1, "loss"] = np.nan
    data.loc[1, "status"] = "failed"
    data.loc[2, "loss"] = np.inf
    data.loc[3, "params"] = -1.0
    data.loc[3, "status"] = "failed"
    data["extra_column"] = "ignored"
    laws = fit(data, bootstrap=0)
    ex = laws.excluded.set_index("row")
    assert "diverged: loss became NaN at step 120" in ex.loc[0, "reason"]
    assert "status=failed" in ex.loc[1, "reason"]
    assert "non-finite" in ex.loc[2, "reason"]
    assert len(laws.points) == len(sweep) - 4


def test_flops_column_not_6nd_sets_tokens_per_flop(sweep):
    # Counted FLOPs 8ND (e.g. with attention): D_opt must be C/(8 N_opt), not C/(6 N_opt).
    data = sweep.copy()
    data["flops"] = 8.0 * data["params"] * data["tokens"]
    laws = fit(data, bootstrap=0, approach="isoflop")
    assert laws.isoflop.flops_per_param_token == pytest.approx(8.0)
    opt = laws.isoflop.optima
    assert np.allclose(opt["tokens_opt"], opt["budget"] / (8.0 * opt["params_opt"]))
    assert any("not 6ND" in n for n in laws.notes)


def test_grouping_without_budget_column(sweep):
    data = sweep.drop(columns="budget")
    data["flops"] = 6 * data["params"] * data["tokens"] * np.random.default_rng(0).uniform(0.99, 1.01, len(data))
    laws = fit(data, bootstrap=0, approach="isoflop")
    assert len(laws.isoflop.optima) == sweep["budget"].nunique()
    assert np.allclose(np.sort(laws.isoflop.optima["budget"]), np.sort(sweep["budget"].unique()), rtol=0.01)


def test_inputs_list_json_jsonl_and_sweep_object(sweep, tmp_path):
    ref = fit(sweep, bootstrap=0, approach="isoflop").isoflop.a.value
    records = sweep.to_dict("records")
    sweep.to_json(tmp_path / "s.json", orient="records")
    sweep.to_json(tmp_path / "s.jsonl", orient="records", lines=True)
    sweep.to_csv(tmp_path / "s.csv", index=False)

    class Results:  # shape of the runner's SweepResults
        table = sweep

    for data in (records, tmp_path / "s.json", str(tmp_path / "s.jsonl"), tmp_path / "s.csv", Results()):
        assert fit(data, bootstrap=0, approach="isoflop").isoflop.a.value == pytest.approx(ref, rel=1e-9)


def test_package_level_fit_is_callable_after_module_import(sweep):
    import flops_fit.fitting  # noqa: F401  (a submodule import must not rebind flops_fit.fit)

    laws = flops_fit.fit(sweep, bootstrap=0, approach="isoflop")
    assert isinstance(laws, ScalingLaws)


def test_fit_module_imports_neither_ray_nor_torch():
    import subprocess

    code = "import sys, flops_fit.fitting, flops_fit.report; print('ray' in sys.modules or 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- bad input: each error names the column or argument --------------------------------


def test_missing_column_lists_columns_and_suggests_map(sweep):
    with pytest.raises(FitError, match=r"(?s)missing column.*'params'.*Columns present.*--map"):
        fit(sweep.rename(columns={"params": "Model Size"}).drop(columns="tokens"), bootstrap=0)


@pytest.mark.parametrize("column,value", [("params", 0.0), ("tokens", -5.0), ("loss", np.nan), ("flops", 0.0)])
def test_non_positive_or_nan_values_name_column_and_rows(sweep, column, value):
    data = sweep.copy()
    if column == "flops":
        data["flops"] = 6 * data["params"] * data["tokens"]
    data.loc[7, column] = value
    with pytest.raises(FitError, match=rf"column '{column}'.*rows 7"):
        fit(data, bootstrap=0)


def test_too_few_budgets(sweep):
    data = sweep[sweep["budget"] <= 3e18]
    with pytest.raises(FitError, match=r"budget: only 2 budget"):
        fit(data, bootstrap=0, approach="isoflop")


def test_budget_with_too_few_points(sweep):
    data = sweep.drop(index=sweep.index[(sweep["budget"] == 1e19)][2:])
    with pytest.raises(FitError, match=r"budget: 1 budget\(s\) have fewer than 3"):
        fit(data, bootstrap=0, approach="isoflop")


def test_unknown_optimum():
    with pytest.raises(FitError, match=r"fit\(optimum='valley'\) must be one of"):
        fit(pd.DataFrame(), optimum="valley")


def test_fit_errors_reach_callers_that_catch_value_error():
    # scripts written against `except ValueError` keep working with fit's errors
    with pytest.raises(ValueError, match=r"fit\(optimum='valley'\) must be one of"):
        fit(pd.DataFrame(), optimum="valley")


def test_bad_where_expression_names_argument(sweep):
    with pytest.raises(FitError, match=r"where: 'no_such_column < 3'"):
        fit(sweep, where="no_such_column < 3", bootstrap=0)


def test_valley_vertex_is_the_public_valley_rule():
    from flops_fit.fitting import valley_vertex

    log_n = np.log([1e6, 2e6, 4e6, 8e6, 16e6])
    loss = 3.0 + 0.2 * (log_n - math.log(3e6)) ** 2
    v = valley_vertex(log_n, loss)
    assert v["bracketed"] and v["reason"] == ""
    assert math.exp(v["log_n_opt"]) == pytest.approx(3e6, rel=1e-9)
    assert v["loss_opt"] == pytest.approx(3.0, rel=1e-12)
    edge = valley_vertex(log_n[:3], 3.0 + 0.2 * (log_n[:3] - math.log(9e6)) ** 2)
    assert not edge["bracketed"] and "outside sampled sizes" in edge["reason"]
