"""What the data cannot tell, said out loud: the Huber threshold as an option and the
warnings of issue 23 (unidentified parameters, checkpoints fitted as final losses, data
repeated beyond ~4 epochs, optima snapped to the grid)."""

import numpy as np
import pytest

from flops_fit import FitError, cli, fit
from tests.conftest import TRUE_LAW, synthetic_sweep


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
