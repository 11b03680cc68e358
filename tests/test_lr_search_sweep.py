"""An LR-searched dry-run sweep through real Ray Tune: sibling trials, a sibling finished by
an earlier run not trained again, results.csv with every sibling."""

import math

import pandas as pd
import pytest

import flops_fit as ff
from flops_fit.lr_search import sibling_id
from flops_fit.sweep_folder import SweepFolder
from worker_side import tiny_task

pytestmark = pytest.mark.slow

MULTIPLIERS = (0.5, 1.0, 2.0)
# No noise; an LR valley at lr*(N) = 2e-3 * (N / 1e4)^-0.5 (lr_c, lr_g below), sharp enough
# (lr_k) that the siblings' losses differ clearly.
LAW = {"noise": 0.0, "lr_k": 0.5, "lr_c": 2e-3 * 1e4 ** 0.5, "lr_g": 0.5}


def test_a_searched_dry_run_trains_each_sibling_once_and_keeps_them_all(ray_session, tmp_path):
    task = tiny_task(tmp_path, lr=3e-3)
    plan = ff.plan_sweep(task, [1e10], sizes=[2])
    (point,) = plan.points
    sweep = tmp_path / "runs" / "lr"
    # An earlier run of this sweep, killed after the 1x sibling finished: its record.
    SweepFolder(str(sweep)).write_lr_search(MULTIPLIERS)
    done = sibling_id(point.point_id, 1.0)
    SweepFolder(str(sweep)).write_finished(done, {"point_id": done, "status": "ok", "final": True, "loss": 1.0,
                                        "tokens": point.tokens, "flops": point.flops, "peak_lr": 3e-3})
    res = ff.run_sweep(task, plan, name="lr", storage_path=tmp_path / "runs", dry_run=LAW, live_fit=False,
                       verbose=False, lr_search=list(MULTIPLIERS))
    trained = {p.name for p in sweep.iterdir() if p.name.startswith(point.point_id)}
    assert trained == {sibling_id(point.point_id, m) for m in (0.5, 2.0)}  # not the finished one
    csv = pd.read_csv(res.results_csv)
    assert list(csv.point_id) == [sibling_id(point.point_id, m) for m in MULTIPLIERS]
    assert list(csv.lr_multiplier) == list(MULTIPLIERS)
    assert csv.lr.tolist() == pytest.approx([1.5e-3, 3e-3, 6e-3])  # 3e-3 x 0.5, x 1, x 2
    trained_rows = csv[csv.lr_multiplier != 1.0]
    assert (trained_rows.batch_size == 8).all() and (trained_rows.warmup == 0.05).all()
    assert csv.best_of_point.tolist() == [False, True, False]  # the recorded 1.0 beats both
    (row,) = res.table.itertuples()
    assert row.point_id == point.point_id and row.status == "ok" and row.loss == 1.0
    assert 1.5e-3 < row.lr_opt < 6e-3 and row.lr_bracketed
    # The two trained siblings' losses are the law's, LR term included, at their own LR.
    from flops_fit.dry_run import dry_run_loss

    for m in (0.5, 2.0):
        trial = csv[csv.lr_multiplier == m].iloc[0]
        expected = dry_run_loss(point, LAW, task.seed, 3e-3 * m)
        assert trial.loss == pytest.approx(expected, rel=1e-9) and math.isfinite(expected)
    # A rerun with other multipliers is refused before any compute.
    with pytest.raises(ValueError, match="other lr_search multipliers"):
        ff.run_sweep(task, plan, name="lr", storage_path=tmp_path / "runs", dry_run=LAW,
                     lr_search=[0.25, 1, 4])


def test_each_point_trains_with_the_batch_its_rule_gives(ray_session, tmp_path):
    from flops_fit import hyperparameters

    probe = ff.plan_sweep(tiny_task(tmp_path), [1e10], sizes=[1, 2])
    small = min(p.params for p in probe)
    # 12 samples per step at the smaller size, about 6 at the larger one (N^-0.5)
    task = tiny_task(tmp_path, batch_size=hyperparameters.power_law(12 * small ** 0.5, 0.5, of="N"))
    plan = ff.plan_sweep(task, [1e10], sizes=[1, 2])
    planned = {p.point_id: p for p in plan}
    assert len({p.batch_size for p in plan}) == 2
    res = ff.run_sweep(task, plan, name="batch-rule", storage_path=tmp_path / "runs", live_fit=False,
                       verbose=False)
    table = res.table
    assert list(table.status) == ["ok"] * 2, table[["point_id", "status", "error"]]
    for row in table.itertuples():
        point = planned[row.point_id]
        # the worker trained the plan's steps of the point's own batch: exactly its D
        assert row.batch_size == point.batch_size and row.steps == point.steps
        assert row.tokens == point.tokens == point.steps * point.batch_size * task.tokens_per_sample
