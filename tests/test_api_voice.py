"""The fit's public objects speak one voice: the fit's level is every law's default, an
Estimate stands for its value, fitted laws are not data, and their reprs stay short."""

import math
import warnings

import pytest

from flops_fit import FitError, fit
from flops_fit.fitting.estimate import Estimate
from tests.conftest import DATA_DIR

CS336 = dict(columns={"params": "parameters", "flops": "compute_budget", "loss": "final_loss"})
LEVEL = 0.8  # not the default 0.95: a law that ignores the fit's level shows it


@pytest.fixture(scope="module")
def laws():
    return fit(DATA_DIR / "cs336_isoflops_curves.json", bootstrap=60, seed=0, level=LEVEL, **CS336)


def test_each_law_predicts_at_the_fits_level_unless_told_otherwise(laws):
    for law in (laws.isoflop, laws.parametric):
        default = law.predict([1e24]).iloc[0]
        at_fit_level = law.predict([1e24], LEVEL).iloc[0]
        at_95 = law.predict([1e24], 0.95).iloc[0]
        assert default["params_low"] == pytest.approx(at_fit_level["params_low"])
        # a wider level gives a wider interval: the level argument is really used
        assert at_95["params_low"] < default["params_low"] < default["params_high"] < at_95["params_high"]


def test_an_estimate_stands_for_its_value_in_arithmetic_and_comparisons():
    a = Estimate(0.5, 0.4, 0.6)
    assert a * 2 == 1.0 and 2 * a == 1.0 and a + 1 == 1.5 and 1 - a == 0.5
    assert a / 2 == 0.25 and 1 / a == 2.0 and a ** 2 == 0.25 and 4 ** a == 2.0 and -a == -0.5
    assert a < 0.6 and a > 0.45 and a <= 0.5 and a >= 0.5 and not a > 0.5
    assert 0.45 in a and 0.7 not in a and 0.5 not in Estimate(0.5)  # no interval: nothing inside
    assert math.exp(a) == pytest.approx(math.exp(0.5))


def test_fitted_laws_are_refused_as_data(laws):
    with pytest.raises(FitError, match="fitted ScalingLaws, not measured runs"):
        fit(laws)


def test_the_prediction_table_has_its_own_name_and_the_old_one_warns(laws):
    table = laws.predictions
    assert list(table.columns[:2]) == ["approach", "flops"] and "tokens_per_param" in table
    with pytest.warns(DeprecationWarning, match="ScalingLaws.predictions"):
        old = laws.table
    assert old.equals(table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        laws.predictions  # the new name does not warn


def test_reprs_do_not_dump_tables(laws):
    for obj in (laws, laws.isoflop, laws.parametric):
        text = repr(obj)
        assert "DataFrame" not in text and "\n" not in text
        assert len(text) < 5000
    assert "a=" in repr(laws.isoflop)  # the fitted numbers are still there


def test_the_old_name_of_the_optimum_rules_still_works_and_warns():
    import flops_fit.fitting as fitting

    with pytest.warns(DeprecationWarning, match="OPTIMUM_RULES"):
        old = fitting.OPTIMA
    assert old == fitting.OPTIMUM_RULES == ("parabola", "lowest", "given")
    with pytest.raises(AttributeError):
        fitting.NO_SUCH_NAME


def test_a_plan_shows_itself_in_one_line(tmp_path):
    import flops_fit as ff
    from flops_fit.data import TextCorpus
    from flops_fit.models import gpt, lm_loss

    task = ff.Task(model_fn=gpt, data=TextCorpus(seq_len=32, cache_dir=str(tmp_path / "c")), loss_fn=lm_loss,
                   tokens_per_sample=32, batch_size=8)
    plan = ff.plan_sweep(task, [1e10, 1e11, 1e12], sizes=[1, 2, 3])
    text = repr(plan)
    assert "\n" not in text and text.startswith("SweepPlan(9 points over 3 budgets, 1e+10..1e+12 FLOPs")
