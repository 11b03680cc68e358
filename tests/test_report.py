"""Presentation: table, summary, plots (no global matplotlib state)."""

import matplotlib
import numpy as np
import pytest

from flops_fit import fit
from flops_fit import report


@pytest.fixture(scope="module")
def laws():
    from tests.conftest import synthetic_sweep

    data = synthetic_sweep(seed=5)
    data.loc[0, "status"] = "failed"
    return fit(data, bootstrap=50, seed=0)


def test_table_has_sweep_budgets_and_decades_above(laws):
    text = laws.table()
    lines = text.splitlines()
    assert lines[0].startswith("| approach | FLOPs | parameters")
    n_budgets = len(laws.isoflop.optima) + report.DEFAULT_EXTRA_DECADES
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 2 * n_budgets
    # the sweep ends at 1e21 FLOPs: 1e23 is 100x beyond it, 1e24 more, and says so
    assert "| isoflop | 1.00e+23 |" in text
    assert "| isoflop | 1.00e+24 (extrapolated) |" in text and "| parametric | 1.00e+24 (extrapolated) |" in text
    assert "extrapolated: more than 100x the largest fitted FLOPs" in text


def test_table_tokens_per_parameter_is_consistent(laws):
    pred = laws.predict([1e21])
    for row in pred.itertuples():
        line = next(l for l in laws.table([1e21]).splitlines() if l.startswith(f"| {row.approach} |"))
        assert f"| {row.tokens / row.params:.3g} |" in line


def test_summary_reports_exponents_intervals_and_exclusions(laws):
    text = laws.summary()
    iso = laws.isoflop
    assert f"a = {iso.a}" in text and "[" in format(iso.a)
    assert "alpha = " in text and "beta = " in text
    assert "status=failed" in text
    assert "50 replicates" in text


def test_plots_written_without_touching_global_state(laws, tmp_path):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    out = tmp_path / "new" / "plots"
    paths = laws.plot(out)
    assert [p.name for p in paths] == list(report.PLOT_FILES[:3])  # no backtest without holdout
    for p in paths:
        assert p.stat().st_size > 10_000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend


def test_plots_with_lowest_optimum_and_no_bootstrap(tmp_path):
    from tests.conftest import synthetic_sweep

    laws = fit(synthetic_sweep(seed=2), optimum="lowest", bootstrap=0, approach="isoflop")
    paths = laws.plot(tmp_path)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    assert np.isnan(laws.predict(1e21)["params_low"]).all()
