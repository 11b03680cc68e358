"""Presentation: table, summary, plots (no global matplotlib state)."""

import matplotlib
import numpy as np
import pytest

from flops_fit import fit
from flops_fit import plots, report


@pytest.fixture(scope="module")
def laws():
    from tests.conftest import synthetic_sweep

    data = synthetic_sweep(seed=5)
    data.loc[0, "status"] = "failed"
    return fit(data, bootstrap=50, seed=0)


def test_table_has_sweep_budgets_and_decades_above(laws):
    text = laws.to_markdown()
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
        line = next(l for l in laws.to_markdown([1e21]).splitlines() if l.startswith(f"| {row.approach} |"))
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
    paths = laws.save_plots(out)
    assert [p.name for p in paths] == list(plots.PLOT_FILES[:3])  # no backtest without holdout
    for p in paths:
        assert p.stat().st_size > 10_000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend


def test_plots_with_lowest_optimum_and_no_bootstrap(tmp_path):
    from tests.conftest import synthetic_sweep

    laws = fit(synthetic_sweep(seed=2), optimum="lowest", bootstrap=0, approach="isoflop")
    paths = laws.save_plots(tmp_path)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    # the IsoFLOP intervals come from the regression, not the bootstrap: present without it
    pred = laws.predict(1e21).iloc[0]
    assert pred["params_low"] < pred["params"] < pred["params_high"]


# --- one shape for results: DataFrames, markdown as a separate text -------------------------


def test_every_predict_is_a_frame_of_the_same_columns(laws):
    from flops_fit.fitting.estimate import PREDICTION_COLUMNS

    c = np.array([1e21, 1e22])
    iso, par = laws.isoflop.predict(c), laws.parametric.predict(c)
    assert list(iso.columns) == list(par.columns) == PREDICTION_COLUMNS
    # the IsoFLOP power laws, N_opt = k_N C^a, and the parametric loss at its own optimum
    np.testing.assert_allclose(iso["params"], laws.isoflop.k_N.value * c ** laws.isoflop.a.value, rtol=1e-9)
    np.testing.assert_allclose(par["loss"], laws.parametric.loss(par["params"], par["tokens"]), rtol=1e-9)
    for frame in (iso, par):
        for q in ("params", "tokens", "loss"):
            assert (frame[f"{q}_low"] <= frame[q]).all() and (frame[q] <= frame[f"{q}_high"]).all()
    both = laws.predict(c)
    assert list(both.columns) == ["approach", *PREDICTION_COLUMNS, "extrapolated"]
    assert list(both["approach"]) == ["isoflop", "isoflop", "parametric", "parametric"]


def test_table_is_a_frame_and_to_markdown_its_text(laws):
    table = laws.predictions
    n_budgets = len(laws.isoflop.optima) + report.DEFAULT_EXTRA_DECADES
    assert len(table) == 2 * n_budgets
    np.testing.assert_allclose(table["tokens_per_param"], table["tokens"] / table["params"])
    rows = [line for line in laws.to_markdown().splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == len(table)
    html = laws._repr_html_()
    assert html.count("<tr") == len(table) + 1 and "tokens_per_param" in html


def test_plot_without_a_folder_returns_figures_and_writes_nothing(laws, tmp_path, monkeypatch):
    import io

    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    before = dict(matplotlib.rcParams)
    figures = laws.plot()
    assert list(figures) == list(plots.PLOT_NAMES[:3])  # no backtest without holdout
    assert all(isinstance(f, Figure) for f in figures.values())
    assert figures["isoflop_curves"].axes[0].get_title().startswith("IsoFLOP profiles")
    assert len(figures["optima_vs_compute"].axes) == 3
    assert list(tmp_path.iterdir()) == []  # nothing written
    png = io.BytesIO()
    figures["parametric_residuals"].savefig(png, format="png")  # each figure has its own canvas
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dict(matplotlib.rcParams) == before


def test_sweep_results_table_is_a_frame_with_markdown_and_html():
    import pandas as pd

    from flops_fit.results import SweepResults

    table = pd.DataFrame({"point_id": ["C1e+12-s2", "C1e+12-s3"], "budget": [1e12, 1e12], "size": [2, 3],
                          "params": [12345.0, 23456.0], "tokens": [1.3e7, 7.1e6], "loss": [2.5, float("nan")],
                          "status": ["ok", "failed"], "error": ["", "RuntimeError: a | b\nline 2"]})
    results = SweepResults(table, path="/runs/x")
    lines = results.to_markdown().splitlines()
    assert lines[0] == "| point_id | budget | size | params | tokens | loss | status |"
    assert lines[2] == "| C1e+12-s2 | 1e+12 | 2 | 1.234e+04 | 1.3e+07 | 2.5 | ok |"
    assert lines[3] == "| C1e+12-s3 | 1e+12 | 3 | 2.346e+04 | 7.1e+06 |  | failed |"
    assert results.to_markdown(["point_id", "error"]).splitlines()[3] == r"| C1e+12-s3 | RuntimeError: a \| b line 2 |"
    html = results._repr_html_()
    assert html.count("<tr") == 3 and "C1e+12-s3" in html


def test_points_a_search_added_are_drawn_apart_in_the_isoflop_plot():
    from tests.conftest import synthetic_sweep

    data = synthetic_sweep(seed=5)
    data["origin"] = "planned"
    added = data.groupby("budget")["params"].idxmax()  # the largest size of each budget
    data.loc[added, "origin"] = "extended"
    fig = plots.plot_isoflop_curves(fit(data, bootstrap=0))
    ax = fig.axes[0]
    # The search's points: drawn larger (diamonds), apart from the planned ones.
    drawn = [tuple(xy) for c in ax.collections if c.get_label() != "added by the search"
             and len(c.get_sizes()) and c.get_sizes()[0] == 22 for xy in c.get_offsets()]
    expected = set(zip(data.loc[added, "params"], data.loc[added, "loss"]))
    assert len(drawn) == len(expected) and set(map(tuple, np.round(drawn, 9))) == set(
        map(tuple, np.round(list(expected), 9)))
    assert "added by the search" in [t.get_text() for t in ax.get_legend().get_texts()]
    plain = fit(data.drop(columns="origin"), bootstrap=0)  # a table without origins: no such entry
    legend = plots.plot_isoflop_curves(plain).axes[0].get_legend()
    assert "added by the search" not in [t.get_text() for t in legend.get_texts()]
