"""The agreement test of the two approaches has power: a loss law without a floor disagrees.

Its false alarms on clean synthetic sweeps are counted by benchmarks/agreement_false_alarms.py."""

import pytest

from flops_fit import fit
from flops_fit.fitting import isoflop
from tests.conftest import DATA_DIR

CS336 = dict(columns={"params": "parameters", "flops": "compute_budget", "budget": "compute_budget",
                      "loss": "final_loss"})


@pytest.fixture(scope="module")
def cs336():
    return fit(DATA_DIR / "cs336_isoflops_curves.json", bootstrap=100, **CS336)


def test_cs336_isoflop_loss_at_1e24_is_within_2_percent_of_the_exact_law(cs336):
    # The data follow L = 2.69 + 1606/N^0.34 + 3211/D^0.36 exactly: the parametric law
    # recovers it (3.081 at 1e24 FLOPs), and the IsoFLOP loss law with its floor must agree.
    iso = cs336.isoflop.predict([1e24]).iloc[0]
    assert iso["loss_low"] <= 3.081 * 1.02 and iso["loss_high"] >= 3.081 / 1.02
    assert abs(iso["loss"] / 3.081 - 1) < 0.02
    assert cs336.compare([1e24]).verdict == "agree"


def test_a_loss_law_without_a_floor_disagrees_at_1e24(cs336, monkeypatch):
    # L_opt = k C^-c (E = 0) falls below the irreducible loss far out: 2.42 at 1e24.
    monkeypatch.setattr(isoflop, "MIN_FLOOR_BUDGETS", 100)
    no_floor = isoflop.isoflop_law(cs336.isoflop.optima, "parabola", 6.0, 0.95, parametric_floor=0.0)
    assert no_floor.predict([1e24])["loss"].iloc[0] < 2.6
    from flops_fit.fitting.agreement import compare

    verdict = compare(no_floor, cs336.parametric, [3e21, 1e24], 0.95)
    assert verdict.verdict == "disagree"
    loss_far = [c for c in verdict.comparisons if c.quantity == "loss" and c.flops == 1e24][0]
    assert not loss_far.agree and "DISAGREE" in str(verdict)
