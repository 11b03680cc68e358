"""A bracket-seeking dry-run sweep through real Ray Tune (the searcher proposes the points)."""

import json

import pytest

import flops_fit as ff
from flops_fit.fitting import budget_optima
from flops_fit.sweep_folder import SEARCH_FILE
from flops_fit.search import ORIGIN_EXTENDED, ORIGIN_PLANNED
from worker_side import tiny_task

pytestmark = pytest.mark.slow

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "noise": 0.0}


def test_a_searched_dry_run_adds_sizes_until_the_budget_is_bracketed(ray_session, tmp_path):
    task = tiny_task(tmp_path)
    # Chinchilla's optimum at 1e13 FLOPs is near size 7 of this dial: sizes 2-4 sit below
    # it, so the static plan's lowest loss is at its largest size (no vertex inside).
    plan = ff.plan_sweep(task, [1e13], sizes=[2, 3, 4])
    res = ff.run_sweep(task, plan, name="searched", storage_path=tmp_path / "runs", dry_run=LAW,
                       live_fit=False, verbose=False, search=ff.BracketSearchOptions(sizes=range(1, 17)))
    t = res.table
    assert (t.status == "ok").all(), t[["point_id", "status", "error"]]
    assert t.point_id.is_unique and len(t) <= len(plan) + 4  # the default bound: 4 added per budget
    assert set(t.origin) == {ORIGIN_PLANNED, ORIGIN_EXTENDED}
    assert t[t.origin == ORIGIN_EXTENDED].params.min() > t[t.origin == ORIGIN_PLANNED].params.max()
    opt = budget_optima(t, "parabola", 6.0).iloc[0]
    assert opt.bracketed, opt
    # Tune's trials are exactly the points the search recorded, and it says why it stopped.
    record = json.loads((tmp_path / "runs" / "searched" / SEARCH_FILE).read_text())
    assert {p["point_id"] for p in record["proposed"]} == set(t.point_id)
    assert record["log"][-1].startswith("budget 1e+13: bracketed")
