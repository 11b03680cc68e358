"""What the data cannot tell, said out loud: the Huber threshold as an option and the
warnings of issue 23 (unidentified parameters, checkpoints fitted as final losses, data
repeated beyond ~4 epochs, optima snapped to the grid)."""

import numpy as np
import pandas as pd
import pytest

from flops_fit import FitError, cli, fit
from tests.conftest import TRUE_LAW


def _with_outliers(sweep, factor=1.3, every=9):
    """Every `every`-th row's loss multiplied by `factor` (bad evaluations)."""
    bad = sweep.copy()
    bad.loc[bad.index[::every], "loss"] *= factor
    return bad


# --- Huber delta --------------------------------------------------------------------------

def test_huber_delta_changes_the_fit_on_data_with_outliers(sweep):
    bad = _with_outliers(sweep)
    robust = fit(bad, bootstrap=0, approach="parametric").parametric
    squares = fit(bad, bootstrap=0, approach="parametric", huber_delta=1.0).parametric
    truth = TRUE_LAW["alpha"]
    # With delta = 1 every residual of ln loss is on the quadratic arm (least squares), and
    # the 30% outliers drag the law; the published delta keeps it near the generating one.
    assert abs(robust.alpha.value - truth) < 0.5 * abs(squares.alpha.value - truth)
    assert abs(robust.E.value - TRUE_LAW["E"]) < abs(squares.E.value - TRUE_LAW["E"])


def test_huber_delta_is_threaded_into_the_bootstrap(sweep):
    bad = _with_outliers(sweep)
    robust = fit(bad, bootstrap=20, seed=1, approach="parametric").parametric
    squares = fit(bad, bootstrap=20, seed=1, approach="parametric", huber_delta=1.0).parametric
    # Same resamples, other objective: the replicates move with the point estimate.
    assert np.median(squares.samples[:, 3]) - np.median(robust.samples[:, 3]) == pytest.approx(
        squares.alpha.value - robust.alpha.value, abs=0.05)
    assert abs(squares.alpha.value - robust.alpha.value) > 0.05


def test_summary_states_the_delta_and_when_residuals_dwarf_it(sweep):
    default = fit(sweep, bootstrap=0, approach="parametric")
    tiny = fit(sweep, bootstrap=0, approach="parametric", huber_delta=1e-5)
    assert "Huber delta=0.001 on log loss" in default.summary()
    assert "the Huber loss acts as L1 here" not in default.summary()  # noise 0.4%: ~3 deltas
    text = tiny.summary()
    assert "Huber delta=1e-05 on log loss" in text and "the Huber loss acts as L1 here" in text
    assert "huber_delta=1e-05" in text  # provenance


@pytest.mark.parametrize("value", [0, -1e-3, float("nan"), float("inf"), "big"])
def test_huber_delta_is_validated(sweep, value):
    with pytest.raises(FitError, match=r"^fit\(huber_delta=.*\) must be a finite number > 0: the Huber"):
        fit(sweep, bootstrap=0, huber_delta=value)


def test_cli_huber_delta_flag(sweep, tmp_path, capsys):
    path = tmp_path / "s.csv"
    sweep.to_csv(path, index=False)
    assert cli.main(["fit", str(path), "--bootstrap", "0", "--huber-delta", "0.05"]) == 0
    assert "Huber delta=0.05 on log loss" in capsys.readouterr().out
    assert cli.main(["fit", str(path), "--bootstrap", "0", "--huber-delta", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flops-fit: error: --huber-delta -1.0 must be") and err.count("\n") == 1


# --- checkpoints fitted as final losses ---------------------------------------------------

def _checkpoint_rows(sweep, count=4):
    """`count` rows of the sweep again at half their tokens, 5% above their loss: earlier
    checkpoints of the same runs."""
    early = sweep.iloc[:count].copy()
    early["tokens"] /= 2
    early["loss"] *= 1.05
    return early


def test_rows_below_their_planned_tokens_warn_as_checkpoints(sweep):
    final = sweep.assign(max_tokens=sweep["tokens"])
    assert not [w for w in fit(final, bootstrap=0).warnings if "checkpoints" in w]
    mixed = pd.concat([final, _checkpoint_rows(final)], ignore_index=True)
    found = [w for w in fit(mixed, bootstrap=0).warnings if "checkpoints" in w]
    assert len(found) == 1
    assert found[0].startswith(f"4 of {len(mixed)} rows have fewer tokens than their run's planned max_tokens")
    assert "where='tokens >= max_tokens'" in found[0]


def test_rows_below_their_runs_last_row_warn_as_checkpoints(sweep):
    runs = sweep.assign(run=[f"r{i}" for i in range(len(sweep))])
    assert not [w for w in fit(runs, bootstrap=0).warnings if "checkpoints" in w]
    mixed = pd.concat([runs, _checkpoint_rows(runs, 3)], ignore_index=True)
    found = [w for w in fit(mixed, bootstrap=0).warnings if "checkpoints" in w]
    assert found and found[0].startswith(f"3 of {len(mixed)} rows have fewer tokens than their run's last row")


def test_max_tokens_can_be_mapped_from_the_cli(sweep, tmp_path, capsys):
    table = pd.concat([sweep, _checkpoint_rows(sweep)], ignore_index=True)
    table["planned"] = np.r_[sweep["tokens"], sweep["tokens"].iloc[:4]]
    table.to_csv(tmp_path / "s.csv", index=False)
    assert cli.main(["fit", str(tmp_path / "s.csv"), "--bootstrap", "0", "--map", "max_tokens=planned"]) == 0
    assert "WARNING: 4 of 67 rows have fewer tokens than their run's planned max_tokens" in capsys.readouterr().out


# --- data repeated beyond ~4 epochs -------------------------------------------------------

def test_published_data_constrained_runs_warn_of_repeated_data(data_dir):
    path = data_dir / "muennighoff2023_datablations_c4_runs.csv"
    every = fit(path, bootstrap=0)
    found = [w for w in every.warnings if "repeat their data" in w]
    table = pd.read_csv(path)
    assert len(found) == 1
    assert found[0].startswith(f"{int((table['epochs'] > 4).sum())} of {len(table)} rows repeat their data "
                               "more than 4 times")
    single = fit(path, bootstrap=0, where="epochs <= 2")
    assert not [w for w in single.warnings if "repeat their data" in w]


def test_repeated_data_is_read_from_unique_tokens_or_a_mapped_epochs_column(sweep, tmp_path, capsys):
    fresh = sweep.assign(unique_tokens=sweep["tokens"])
    assert not [w for w in fit(fresh, bootstrap=0).warnings if "repeat their data" in w]
    repeated = fresh.copy()
    repeated.loc[:5, "unique_tokens"] /= 10  # six rows saw their data 10 times
    found = [w for w in fit(repeated, bootstrap=0).warnings if "repeat their data" in w]
    assert found and found[0].startswith(f"6 of {len(sweep)} rows repeat") and "up to 10 epochs" in found[0]
    sweep.assign(n_epochs=np.where(np.arange(len(sweep)) < 2, 8.0, 1.0)).to_csv(tmp_path / "e.csv", index=False)
    assert cli.main(["fit", str(tmp_path / "e.csv"), "--bootstrap", "0", "--map", "epochs=n_epochs"]) == 0
    assert f"WARNING: 2 of {len(sweep)} rows repeat their data more than 4 times (up to 8 epochs)" in \
        capsys.readouterr().out


# --- optima snapped to the grid -----------------------------------------------------------

def test_lowest_optimum_says_it_is_snapped_to_the_grid(sweep):
    snapped = [w for w in fit(sweep, bootstrap=0, optimum="lowest").warnings if "sampled sizes" in w]
    assert len(snapped) == 1
    # conftest: 9 sizes over +-0.8 decades, a step of 0.2 decades
    assert "(median spacing 0.2 decades of N)" in snapped[0]
    assert not [w for w in fit(sweep, bootstrap=0).warnings if "sampled sizes (" in w]


# --- parametric parameters the rows do not identify ---------------------------------------

def _collinear(seed=0):
    """Tokens = 20 x params at every point: the rows cannot tell the N term from the D term."""
    rng = np.random.default_rng(seed)
    n = np.repeat(10 ** np.linspace(7, 9, 7), 7) * 10 ** rng.uniform(-0.05, 0.05, 49)
    d = 20 * n
    law = TRUE_LAW
    loss = (law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]) * np.exp(rng.normal(0, 0.003, 49))
    return pd.DataFrame({"params": n, "tokens": d, "loss": loss})


def test_collinear_n_and_d_warn_that_the_parameters_are_not_identified():
    laws = fit(_collinear(), bootstrap=0, approach="parametric")
    tied = [w for w in laws.warnings if w.startswith("parametric law not identified: two local optima")]
    assert len(tied) == 1 and "the data cannot choose between them" in tied[0]
    wide = fit(_collinear(), bootstrap=40, approach="parametric").warnings
    assert any(w.startswith("parametric ") and "is not identified by these rows: its bootstrap interval" in w
               for w in wide)


def test_an_isoflop_design_identifies_the_parameters(sweep):
    laws = fit(sweep, bootstrap=100, seed=2)
    assert not [w for w in laws.warnings if "not identified" in w]


# --- a law with no compute-optimal allocation ---------------------------------------------

def test_a_law_with_no_finite_allocation_predicts_nan_and_says_so(sweep):
    # Loss falling linearly in ln N and barely in ln D: the fit takes exponents near zero,
    # and G = (alpha A / (beta B))^(1/(alpha+beta)) is e^2000 (an OverflowError before).
    creeping = sweep.assign(loss=10 - 0.02 * np.log(sweep["params"]) - 0.0002 * np.log(sweep["tokens"]))
    laws = fit(creeping, bootstrap=0, approach="parametric")
    assert not np.isfinite(laws.parametric.G.value)
    assert any(w.startswith("the parametric law has no finite compute-optimal allocation") for w in laws.warnings)
    pred = laws.predict([1e20, 1e30])
    assert pred[["params", "tokens", "loss"]].isna().all().all()
    assert "| parametric | 1.00e+20 | nan | nan |" in laws.to_markdown([1e20])
    healthy = fit(sweep, bootstrap=0, approach="parametric")
    assert not [w for w in healthy.warnings if "allocation" in w]
    assert np.isfinite(healthy.predict([1e20])[["params", "tokens", "loss"]].to_numpy()).all()
