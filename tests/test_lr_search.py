"""Hyperparameter rules and the learning-rate search, without Ray: the rules' values, the
choice of a point's best sibling, the collapse of siblings into points, the LR law's fit,
and the dry-run law's LR term recovered in-process (flops_fit/lr_search.py,
flops_fit/hyperparameters.py, train.dry_run_loss)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flops_fit as ff
from flops_fit import hyperparameters
from flops_fit import lr_search
from flops_fit import results
from flops_fit.plan import SweepPlan, SweepPoint
from flops_fit.dry_run import CHINCHILLA_LAW, dry_run_loss
from flops_fit.sweep_folder import PLAN_FILE, SweepFolder

MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


# --- rules --------------------------------------------------------------------------------

def test_published_rules_give_the_papers_numbers():
    # DeepSeek LLM eq. 1 at C = 1e20 FLOPs: 0.3118 * 10^(-2.5) and 0.2920 * 10^(6.542) tokens
    assert hyperparameters.deepseek_lr()(1e9, 1e10, 1e20) == pytest.approx(9.860e-4, rel=1e-3)
    assert hyperparameters.deepseek_batch_tokens()(1e9, 1e10, 1e20) == pytest.approx(1.017e6, rel=1e-3)
    # Step Law at N = 1e9, D = 1e11: 1.79 * 10^(-6.417) * 10^(3.377); batch 0.58 * 10^(6.281)
    assert hyperparameters.step_law_lr()(1e9, 1e11, 6e20) == pytest.approx(1.633e-3, rel=1e-3)
    assert hyperparameters.step_law_batch_tokens()(1e9, 1e11, 6e20) == pytest.approx(1.108e6, rel=1e-3)


def test_a_power_law_of_n_halves_the_lr_for_four_times_the_params():
    rule = hyperparameters.power_law(0.02, 0.5)
    assert rule(4e6, 1, 1) / rule(1e6, 1, 1) == pytest.approx(0.5)
    assert hyperparameters.power_law(1.0, 0.25, of="C")(1, 1, 1e8) == pytest.approx(1e-2)


def _task(**kw):
    from flops_fit.models import gpt, lm_loss

    return ff.Task(model_fn=gpt, data=lambda: None, loss_fn=lm_loss, tokens_per_sample=128, **kw)


def test_a_task_takes_rules_for_lr_and_warmup_and_resolves_them_per_point():
    task = _task(lr=hyperparameters.step_law_lr(), warmup_fraction=hyperparameters.power_law(0.5, 0.25, of="D"))
    hp = task.hyperparameters(1e6, 1e8, 6e14)
    assert hp["lr"] == pytest.approx(1.79 * 1e6 ** -0.713 * 1e8 ** 0.307)
    assert hp["warmup"] == pytest.approx(0.5 * 1e8 ** -0.25)
    assert hp["batch_size"] == 32


@pytest.mark.parametrize("field, rule", [("lr", hyperparameters.power_law(1.0, 0.5, of="N")), ("warmup_fraction", hyperparameters.constant(2.0))])
def test_a_rule_out_of_range_names_its_field(field, rule):
    task = _task(**{field: rule})
    with pytest.raises(ValueError, match=field.split("_")[0]):
        task.hyperparameters(-1.0 if field == "lr" else 1e6, 1e8, 6e14)


class _NaNRule(hyperparameters.Rule):
    def __call__(self, params, tokens, flops):
        return math.nan


def test_a_rule_returning_nan_is_refused_before_any_compute(tmp_path, monkeypatch):
    from flops_fit import ray_setup

    monkeypatch.setattr(ray_setup, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    task = _task(lr=_NaNRule())
    plan = _plan()
    with pytest.raises(ValueError, match=r"Task\(lr=<rule>\) is not a finite number"):
        ff.run_sweep(task, plan, name="nan-rule", storage_path=tmp_path, dry_run=True)


# --- a batch per point (Task.batch_size as a rule) ---------------------------------------

def test_a_batch_rule_in_tokens_gives_whole_micro_batches_of_samples():
    rule = hyperparameters.batch_in_samples(hyperparameters.deepseek_batch_tokens(), 128)
    task = _task(batch_size=rule, micro_batch_size=4)
    # DeepSeek's 0.2920 C^0.3271 tokens at C = 6e14 FLOPs: 1.99e4 tokens = 155.6 samples of
    # 128, rounded to whole micro-batches of 4
    samples = 0.2920 * 6e14 ** 0.3271 / 128
    assert samples == pytest.approx(155.6, abs=0.1)
    assert task.batch_at(1e6, 1e8, 6e14) == 156
    assert task.hyperparameters(1e6, 1e8, 6e14)["batch_size"] == 156
    with pytest.raises(ValueError, match=r"Task.batch_size is a rule"):
        task.batch_tokens
    # a rule in tokens passed as samples would ask for far fewer than one sample: one line
    tiny = _task(batch_size=hyperparameters.power_law(1.0, 1.0, of="N"))
    with pytest.raises(ValueError, match=r"Task\(batch_size=<rule>\) gives .* at least 1 sample") as err:
        tiny.batch_at(1e6, 1e8, 6e14)
    assert "\n" not in str(err.value)


def test_a_batch_rule_plans_each_point_with_its_own_batch_and_steps():
    from flops_fit import flops

    # 4000 N^-0.5 samples per step: larger models, smaller batches
    task = _task(batch_size=hyperparameters.power_law(4.0e3, 0.5, of="N"))
    plan = ff.plan_sweep(task, [1e12, 3e12], sizes=[1, 2, 3, 4])
    assert plan.batch_tokens == 0 and "global batch per point" in plan.summary()
    batches = {p.point_id: p.batch_size for p in plan}
    assert len(set(batches.values())) == 4  # one batch per size
    for p in plan:
        assert p.batch_size == round(4.0e3 * p.params ** -0.5)
        assert p.tokens == p.steps * p.batch_size * 128
        # whole steps of the point's own batch spend the budget to within half a step
        assert abs(p.tokens - flops.tokens_for_budget(p.budget, p.flops_per_token)) <= p.batch_size * 128 / 2
    # the trials carry the planned batch (results.csv's batch_size), LR siblings too
    from flops_fit.execute import trial_points

    point = plan.points[0]
    trials = trial_points(point.__dict__, task, (0.5, 1.0, 2.0))
    assert {t["batch_size"] for t in trials} == {point.batch_size}


def test_a_plan_with_a_batch_rule_runs_only_with_that_task(tmp_path, monkeypatch):
    from flops_fit import ray_setup

    monkeypatch.setattr(ray_setup, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    ruled = _task(batch_size=hyperparameters.power_law(4.0e3, 0.5, of="N"))
    plan = ff.plan_sweep(ruled, [1e12], sizes=[1, 2, 3])
    with pytest.raises(ValueError, match="plan with the same Task"):
        ff.run_sweep(_task(), plan, name="x", storage_path=tmp_path, dry_run=True)
    with pytest.raises(ValueError, match="plan with the same Task"):
        ff.run_sweep(ruled, ff.plan_sweep(_task(), [1e12], sizes=[1, 2, 3]), name="x", storage_path=tmp_path,
                     dry_run=True)
    # every point's batch must split over the workers before any compute
    with pytest.raises(ValueError, match=r"the point's batch .* not divisible by num_workers=7"):
        ff.run_sweep(ruled, plan, name="x", storage_path=tmp_path, dry_run=True, num_workers=7)


def test_the_bracket_search_adds_points_with_the_batch_rules_value():
    from flops_fit.search import BracketSearch, batch_table, size_table

    task = _task(batch_size=hyperparameters.power_law(4.0e3, 0.5, of="N"))
    plan = ff.plan_sweep(task, [1e12, 3e12, 1e13], sizes=[2, 3, 4])
    sizes = size_table(task, plan, range(1, 8))
    batches = batch_table(task, plan, sizes)
    search = BracketSearch(plan, sizes, batches=batches)
    added = search._point(1e12, 6, "extended")
    params = sizes[6][0]
    assert added["batch_size"] == round(4.0e3 * params ** -0.5) == batches[(1e12, 6)][0]
    assert added["tokens"] == added["steps"] * added["batch_size"] * 128


# --- the lr_search argument ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [[0, -1], [], [0.5, 1], [1, 2, "secret-token"], [1, 1, 2], [1, float("nan"), 2],
                                 "0.5 1 2", 3, [True, 1, 2]])
def test_bad_lr_search_is_one_line_naming_the_argument_and_not_the_input(bad):
    with pytest.raises(ValueError) as err:
        lr_search.check_lr_search(bad)
    message = str(err.value)
    assert "\n" not in message and "lr_search" in message and "e.g. lr_search=[0.25, 0.5, 1, 2, 4]" in message
    assert "secret-token" not in message


def test_lr_search_is_sorted_floats():
    assert lr_search.check_lr_search([np.float32(4), 1, 0.25]) == (0.25, 1.0, 4.0)


def test_sibling_ids_are_stable_and_map_back_to_their_point():
    sid = lr_search.sibling_id("C1e+12-s4", 0.25)
    assert sid == "C1e+12-s4-lr0.25" and lr_search.point_of(sid) == "C1e+12-s4"
    assert lr_search.point_of(lr_search.sibling_id("C1e+12-s4-add", 2.0)) == "C1e+12-s4-add"


# --- choosing a point's best sibling ------------------------------------------------------

def test_the_parabola_through_the_best_three_finds_the_vertex_between_grid_points():
    vertex = math.log(1.3)  # the optimal multiplier: 1.3 x the rule's LR
    losses = [2.0 + 0.1 * (math.log(m) - vertex) ** 2 for m in MULTIPLIERS]
    choice = lr_search.choose(MULTIPLIERS, losses, ["ok"] * 5)
    assert choice.bracketed and MULTIPLIERS[choice.best] == 1.0
    assert choice.lr_opt_multiplier == pytest.approx(1.3, rel=1e-9)


@pytest.mark.parametrize("losses, statuses, best, bracketed", [
    ([1.0, 1.1, 1.2, 1.3, 1.4], ["ok"] * 5, 0, False),  # lowest at the smallest LR
    ([1.4, 1.3, 1.2, 1.1, 1.0], ["ok"] * 5, 4, False),  # lowest at the largest LR
    ([1.4, 1.3, 1.2, 1.1, math.nan], ["ok"] * 4 + ["diverged"], 3, True),  # the next one diverged: worse
    ([1.4, 1.3, 1.2, 1.1, math.nan], ["ok"] * 4 + ["failed"], 3, False),  # unknown neighbour
])
def test_a_best_lr_at_the_edge_of_the_grid_is_not_bracketed(losses, statuses, best, bracketed):
    choice = lr_search.choose(MULTIPLIERS, losses, statuses)
    assert choice.best == best and choice.bracketed == bracketed
    assert bracketed or choice.reason


def _sibling_rows(point_id, budget, size, params, losses, rule_lr=1e-2, statuses=None):
    statuses = statuses or ["ok"] * len(losses)
    return [dict(point_id=lr_search.sibling_id(point_id, m), budget=budget, size=size, params=params,
                 tokens=budget / (6 * params), flops=budget, loss=l, status=s, error="",
                 lr=rule_lr * m, lr_multiplier=m) for m, l, s in zip(MULTIPLIERS, losses, statuses)]


def test_collapse_keeps_every_sibling_and_marks_one_best_per_point():
    raw = pd.DataFrame(_sibling_rows("C1e+12-s2", 1e12, 2, 1e4, [2.3, 2.2, 2.1, 2.15, 2.4])
                       + _sibling_rows("C1e+12-s3", 1e12, 3, 3e4, [2.5, 2.4, 2.3, 2.2, 2.1]))
    siblings, points = lr_search.collapse(raw)
    assert len(siblings) == 10 and siblings["best_of_point"].sum() == 2
    assert list(points["point_id"]) == ["C1e+12-s2", "C1e+12-s3"]
    first, second = points.iloc[0], points.iloc[1]
    assert first["status"] == "ok" and first["loss"] == 2.1 and first["lr_multiplier"] == 1.0
    assert 1e-2 < first["lr_opt"] < 2e-2  # the parabola leans toward the next-lowest, 2x
    assert second["status"] == lr_search.LR_NOT_BRACKETED and "LR not bracketed" in second["error"]
    kept = lr_search.collapse(raw, keep_unbracketed=True)[1].iloc[1]
    assert kept["status"] == "ok" and kept["loss"] == 2.1 and not kept["lr_bracketed"]


def test_a_point_waits_for_all_its_siblings():
    raw = pd.DataFrame(_sibling_rows("C1e+12-s2", 1e12, 2, 1e4, [2.3, 2.2, 2.1, math.nan, 2.4],
                                     statuses=["ok", "ok", "ok", "incomplete", "ok"]))
    point = lr_search.collapse(raw)[1].iloc[0]
    assert point["status"] == "incomplete" and math.isnan(point["loss"]) and "4 of 5" in point["error"]


# --- a sweep folder with siblings ---------------------------------------------------------

def _plan(budgets=(1e12,), sizes=((1, 10_000), (2, 30_000), (3, 90_000))):
    points = tuple(SweepPoint(f"C{c:.4g}-s{s}", c, s, n, 6 * n, 100, int(c / (6 * n)), c)
                   for c in budgets for s, n in sizes)
    return SweepPlan(points, 32 * 128, "non_embedding", "6N")  # the default Task's global batch


def _fake_sweep(folder, loss_of, plan=None):
    """A sweep folder as run_sweep(lr_search=MULTIPLIERS) leaves it: plan, LR-search record,
    one trial folder and finished record per sibling; loss_of(point, multiplier) -> loss."""
    plan = plan or _plan()
    folder.mkdir(parents=True)
    (folder / PLAN_FILE).write_text(plan.to_json())
    SweepFolder(str(folder)).write_lr_search(MULTIPLIERS)
    for p in plan:
        for m in MULTIPLIERS:
            sid = lr_search.sibling_id(p.point_id, m)
            point = {**p.__dict__, "point_id": sid, "lr": 1e-2 * m, "warmup": 0.05, "batch_size": 32,
                     "lr_multiplier": m}
            (folder / sid).mkdir()
            (folder / sid / "params.json").write_text(json.dumps({"point": point}))
            SweepFolder(str(folder)).write_finished(sid, {"final": True, "status": "ok", "loss": loss_of(p, m),
                                                          "tokens": p.tokens, "flops": p.flops})
    return plan


def _by_size(losses_by_size):
    return lambda p, m: losses_by_size[p.size][MULTIPLIERS.index(m)]


def test_a_searched_sweep_folder_loads_as_one_row_per_point_and_writes_every_sibling(tmp_path):
    folder = tmp_path / "sweep"
    _fake_sweep(folder, _by_size({1: [2.5, 2.4, 2.3, 2.35, 2.6], 2: [2.4, 2.2, 2.1, 2.2, 2.5],
                                  3: [2.6, 2.5, 2.4, 2.3, 2.2]}))
    loaded = results.load_results(folder)
    assert list(loaded.table["point_id"]) == ["C1e+12-s1", "C1e+12-s2", "C1e+12-s3"]
    assert list(loaded.table["status"]) == ["ok", "ok", lr_search.LR_NOT_BRACKETED]
    assert list(loaded.table["loss"]) == [2.3, 2.1, 2.2]
    results.write_results_csv(loaded)
    csv = pd.read_csv(loaded.results_csv)
    assert len(csv) == 15
    for col in ("lr", "batch_size", "warmup", "lr_multiplier", "best_of_point"):
        assert col in csv.columns and csv[col].notna().all(), col
    assert csv.groupby(["budget", "size"])["best_of_point"].sum().tolist() == [1, 1, 1]
    assert sorted(csv.loc[csv.best_of_point, "lr"]) == pytest.approx([1e-2, 1e-2, 4e-2])
    assert results.load_results(folder, keep_lr_unbracketed=True).table["status"].tolist() == ["ok"] * 3


def _four_budgets_plan():
    return _plan((1e11, 3e11, 1e12, 3e12), sizes=((1, 3_000), (2, 10_000), (3, 30_000), (4, 100_000), (5, 300_000)))


def _four_budgets_loss(p, m):
    """Chinchilla's law; the LR valley at 1x the rule, or past 4x at one point."""
    law = CHINCHILLA_LAW
    shift = 3.0 if p.point_id == "C1e+12-s3" else 0.0
    return (law["E"] + law["A"] / p.params ** law["alpha"] + law["B"] / p.tokens ** law["beta"]
            + 0.1 * (math.log(m) - shift) ** 2)


def test_flops_fit_fit_on_a_searched_folder_fits_best_siblings_and_names_the_excluded(tmp_path, capsys):
    from flops_fit.cli import main

    plan, loss_of, law = _four_budgets_plan(), _four_budgets_loss, CHINCHILLA_LAW
    folder = tmp_path / "sweep"
    _fake_sweep(folder, loss_of, plan)
    assert main(["fit", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "status=lr-not-bracketed: LR not bracketed" in out
    laws = ff.fit(str(folder), bootstrap=0)
    reasons = laws.excluded["reason"].astype(str)
    assert reasons.str.contains("lr-not-bracketed").sum() == 1
    fitted = ff.fit(results.load_results(folder, keep_lr_unbracketed=True), bootstrap=0)
    assert not fitted.excluded["reason"].astype(str).str.contains("lr-not-bracketed").any()
    # the rows fitted are the best siblings, at 1x the rule: the law itself, recovered exactly
    # (a sibling 2x off adds 0.048 nats)
    assert float(laws.parametric.alpha) == pytest.approx(law["alpha"], abs=1e-3)


# --- the dry run's LR term, recovered in-process -----------------------------------------

# A sharp LR valley and low noise, so that one sweep of 35 points decides: lr_k = 0.3 nats
# per ln(lr / lr*)^2 (a factor 2 off costs 0.14 nats), 0.3 % noise.
RECOVERY_LAW = {"lr_k": 0.3, "noise": 0.003}
RECOVERY_BUDGETS = (1e11, 3e11, 1e12, 3e12, 1e13)  # FLOPs
CONSTANT_LR = 1e-2  # the example's LR: lr*(N) there at N ~ 1.5e4, 5x too high at 5e5
WIDE_SEARCH = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4)  # reaches lr*(N) of every size from CONSTANT_LR


def _law_points():
    """7 sizes per budget, log-spaced 4x either side of the law's N_opt, D = C / (6 N)."""
    law = CHINCHILLA_LAW
    a = law["beta"] / (law["alpha"] + law["beta"])
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
    points = []
    for c in RECOVERY_BUDGETS:
        n_opt = g * (c / 6) ** a
        for n in np.geomspace(n_opt / 4, n_opt * 4, 7).astype(int):
            d = int(c / (6 * n))
            points.append(SweepPoint(f"C{c:.4g}-n{n}", c, int(n), int(n), 6.0 * n, 1, d, 6.0 * n * d))
    return points, a


def _dry_run_table(points, law, seed, multipliers=None):
    """The table a dry run of `points` would write, each loss from train.dry_run_loss at the
    peak LR the sweep's driver gives the trial (execute.trial_points)."""
    rows = []
    for p in points:
        for m in multipliers or (None,):
            pid = p.point_id if m is None else lr_search.sibling_id(p.point_id, m)
            lr = CONSTANT_LR * (m or 1.0)
            trial = SweepPoint(pid, p.budget, p.size, p.params, p.flops_per_token, p.steps, p.tokens, p.flops)
            rows.append(dict(point_id=pid, budget=p.budget, size=p.size, params=p.params, tokens=p.tokens,
                             flops=p.flops, loss=dry_run_loss(trial, law, seed, lr), status="ok", error="",
                             lr=lr, lr_multiplier=m))
    table = pd.DataFrame(rows)
    return lr_search.collapse(table)[1] if multipliers else table


@pytest.mark.parametrize("seed", [0, 1])
def test_a_searched_dry_run_recovers_a_and_the_lr_exponent_a_constant_lr_does_not(seed):
    from flops_fit.dry_run import DRY_RUN_LR_LAW

    points, a_law = _law_points()
    constant = ff.fit(_dry_run_table(points, RECOVERY_LAW, seed), bootstrap=0)
    searched_points = _dry_run_table(points, RECOVERY_LAW, seed, WIDE_SEARCH)
    searched = ff.fit(searched_points, bootstrap=0)
    assert abs(float(constant.isoflop.a) - a_law) > 0.04
    assert abs(float(searched.isoflop.a) - a_law) < 0.02
    assert (searched_points["status"] == "ok").all()  # the wide grid brackets every size
    law = lr_search.fit_lr_law(searched_points)
    assert abs(law.exponent - DRY_RUN_LR_LAW["lr_g"]) < 0.05
    low, high = law.exponent_interval
    assert low < law.exponent < high


def test_without_lr_k_the_dry_run_ignores_the_lr():
    point = SweepPoint("C1e+12-s3", 1e12, 3, 100_000, 6e5, 10, 1_000_000, 6e11)
    assert dry_run_loss(point, {}, 0, 1e-2) == dry_run_loss(point, {}, 0, 1.0) == dry_run_loss(point, {}, 0)
    assert dry_run_loss(point, {"lr_k": 0.1}, 0, 1.0) > dry_run_loss(point, {"lr_k": 0.1}, 0, 1e-2)


def test_the_cli_keeps_lr_unbracketed_points_when_asked(tmp_path, capsys):
    from flops_fit.cli import main

    folder = tmp_path / "sweep"
    _fake_sweep(folder, _four_budgets_loss, _four_budgets_plan())
    assert main(["fit", str(folder), "--bootstrap", "0"]) == 0
    assert "excluded rows: 1;" in capsys.readouterr().out
    assert main(["fit", str(folder), "--bootstrap", "0", "--keep-lr-unbracketed"]) == 0
    assert "excluded rows: 0;" in capsys.readouterr().out
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"params": [1, 2, 3], "tokens": [1, 2, 3], "loss": [1, 2, 3]}).to_csv(plain, index=False)
    assert main(["fit", str(plain), "--keep-lr-unbracketed"]) == 2
    assert "--keep-lr-unbracketed takes a sweep folder" in capsys.readouterr().err


def test_the_isoflop_plot_marks_lr_unbracketed_points_where_they_are(tmp_path):
    from flops_fit import plots

    folder = tmp_path / "sweep"
    _fake_sweep(folder, _four_budgets_loss, _four_budgets_plan())
    ax = plots.plot_isoflop_curves(ff.fit(str(folder), bootstrap=0)).axes[0]
    assert "LR not bracketed (excluded)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # the one unbracketed point (C1e+12-s3, 30k params) is drawn hollow at its best sibling's loss
    best = min(_four_budgets_loss(p, m) for p in _four_budgets_plan() if p.point_id == "C1e+12-s3"
               for m in MULTIPLIERS)
    hollow = [tuple(xy) for c in ax.collections if len(c.get_offsets()) and not c.get_facecolors().any()
              and c.get_sizes()[0] == 40 for xy in c.get_offsets()]
    assert hollow == [pytest.approx((30_000, best))]
    plain = tmp_path / "plain"
    law = CHINCHILLA_LAW
    _fake_sweep(plain, lambda p, m: (law["E"] + law["A"] / p.params ** law["alpha"] + law["B"] / p.tokens ** law["beta"]
                                     + 0.1 * math.log(m) ** 2), _four_budgets_plan())
    legend = plots.plot_isoflop_curves(ff.fit(str(plain), bootstrap=0)).axes[0].get_legend()
    assert "LR not bracketed (excluded)" not in [t.get_text() for t in legend.get_texts()]


def test_the_report_names_each_points_best_multiplier_and_draws_optimal_lr(tmp_path, capsys):
    from flops_fit.sweep_script import lr_search_report

    folder = tmp_path / "sweep"
    _fake_sweep(folder, _four_budgets_loss, _four_budgets_plan())
    text, figure = lr_search_report(results.load_results(folder))
    assert text.count("| C") == 20 and text.count("NO: LR not bracketed") == 1
    assert "| C1e+12-s3 | lr-not-bracketed | 4 |" in text and "| C1e+11-s1 | ok | 1 |" in text
    # every bracketed optimum is the rule's 1e-2 (the valley is at 1x): a flat fitted rule
    import re

    coefficient, exponent = re.search(r"lr_opt = (\S+) N\^(\S+)", text).groups()
    assert float(coefficient) == pytest.approx(0.01) and abs(float(exponent)) < 1e-6
    figure.savefig(tmp_path / "optimal_lr.png")
    assert (tmp_path / "optimal_lr.png").stat().st_size > 0


def test_lr_rule_takes_the_rule_fitted_to_an_lr_searched_sweep(tmp_path, capsys):
    import argparse

    from flops_fit.sweep_script import learning_rate

    folder = tmp_path / "sweep"
    # Each point's LR valley at 1.2e-2 * (N / 1e4)^-0.4: the rule's 1e-2 times a multiplier off 1
    target = lambda p: 1.2e-2 * (p.params / 1e4) ** -0.4  # noqa: E731
    _fake_sweep(folder, lambda p, m: 2.0 + 0.2 * math.log(1e-2 * m / target(p)) ** 2, _four_budgets_plan())
    rule = learning_rate(argparse.Namespace(lr=3e-3, lr_rule=str(folder)))
    assert isinstance(rule, hyperparameters.PowerLaw) and rule.exponent == pytest.approx(0.4, abs=0.02)
    assert rule(1e4, 1e6, 6e10) == pytest.approx(1.2e-2, rel=0.05)
    assert "Learning rate from" in capsys.readouterr().out
    assert learning_rate(argparse.Namespace(lr=3e-3, lr_rule=None)) == 3e-3


# --- --lr-rule fitted: search the smallest budgets, then the fitted rule on the rest ------

def _in_process_run_sweep(calls, law):
    """A stand-in for ff.run_sweep with the dry run's losses (train.dry_run_loss at each trial's
    peak LR, as the Ray dry run draws them): the point of these tests is the flow between
    the two sweeps, not Ray (tests/test_lr_search_sweep.py runs the searched sweep on Ray)."""
    from flops_fit.execute import trial_points
    from flops_fit.lr_search import collapse

    def run_sweep(task, plan, name, storage_path, lr_search=None, **_):
        calls.append({"budgets": sorted({p.budget for p in plan}), "name": name, "lr_search": lr_search,
                      "lr": task.lr})
        rows = []
        for p in plan:
            for trial in trial_points(p.__dict__, task, lr_search):
                point = SweepPoint(trial["point_id"], p.budget, p.size, p.params, p.flops_per_token, p.steps,
                                   p.tokens, p.flops)
                rows.append({**trial, "loss": dry_run_loss(point, law, task.seed, trial["lr"]), "status": "ok",
                             "error": ""})
        raw = pd.DataFrame(rows)
        if not lr_search:
            return results.SweepResults(raw, str(Path(storage_path) / name), plan)
        raw, points = collapse(raw)
        return results.SweepResults(points, str(Path(storage_path) / name), plan, siblings=raw)

    return run_sweep


def test_lr_rule_fitted_searches_the_small_budgets_then_trains_the_rest_with_the_fitted_rule(
        tmp_path, monkeypatch, capsys):
    from flops_fit.sweep_script import lr_search_report, plan_and_run
    from flops_fit.dry_run import DRY_RUN_LR_LAW
    from driver_side import load_example
    from worker_side import tiny_task

    calls = []
    monkeypatch.setattr(ff, "run_sweep", _in_process_run_sweep(calls, RECOVERY_LAW))
    sweep = load_example("sweep")
    args = sweep.parse_args(["--budgets", "1e11", "3e11", "1e12", "3e12", "--sizes", "1", "2", "3", "4", "5",
                             "--lr", "1e-2", "--lr-search", *map(str, WIDE_SEARCH), "--lr-rule", "fitted",
                             "--storage-path", str(tmp_path), "--name", "tuned"])
    swept = plan_and_run(tiny_task(tmp_path, lr=args.lr), args)
    searched, rest = calls
    assert searched["budgets"] == [1e11, 3e11] and searched["name"] == "tuned-lr-search"
    assert list(searched["lr_search"]) == list(WIDE_SEARCH) and searched["lr"] == 1e-2
    assert rest["budgets"] == [1e12, 3e12] and rest["name"] == "tuned" and rest["lr_search"] is None
    # the larger budgets train with the rule lr_opt = c N^-g fitted to the searched points,
    # which follows the dry run's LR valley lr*(N) = 0.9 N^-0.47 (within the noise of 10
    # tiny points, whose loss noise is of the size of the LR term)
    law = lr_search.fit_lr_law(swept.table[swept.table["budget"] < 1e12])
    assert isinstance(rest["lr"], hyperparameters.PowerLaw)
    assert (rest["lr"].coefficient, rest["lr"].exponent) == pytest.approx((law.coefficient, law.exponent))
    assert rest["lr"].exponent == pytest.approx(DRY_RUN_LR_LAW["lr_g"], abs=0.1)
    table = swept.table
    assert sorted(table["budget"].unique()) == [1e11, 3e11, 1e12, 3e12] and len(table) == 20
    assert table.loc[table["budget"] >= 1e12, "lr_multiplier"].isna().all()
    assert swept.path == str(tmp_path / "tuned") and len(swept.siblings) == 10 * len(WIDE_SEARCH)
    text, _ = lr_search_report(swept)  # the report lists the searched points only
    assert text.count("| C") == 10
    assert "(LR search)" in capsys.readouterr().out


def test_lr_rule_fitted_stops_before_the_rest_when_a_searched_point_failed(tmp_path, monkeypatch):
    from flops_fit.sweep_script import plan_and_run
    from driver_side import load_example
    from worker_side import tiny_task

    calls = []
    inner = _in_process_run_sweep(calls, RECOVERY_LAW)

    def failing(task, plan, **kw):
        res = inner(task, plan, **kw)
        res.table.loc[0, "status"] = "failed"
        return res

    monkeypatch.setattr(ff, "run_sweep", failing)
    args = load_example("sweep").parse_args(["--budgets", "1e11", "1e12", "--sizes", "1", "2", "3",
                                             "--lr-search", "0.5", "1", "2", "--lr-rule", "fitted",
                                             "--storage-path", str(tmp_path)])
    with pytest.raises(SystemExit, match="Rerun the same command to resume"):
        plan_and_run(tiny_task(tmp_path), args)
    assert len(calls) == 1  # the rule's budgets never started


def test_the_sweep_script_exits_non_zero_on_failed_points_or_no_fit():
    from flops_fit.sweep_script import exit_status

    table = pd.DataFrame({"status": ["ok", "diverged", "lr-not-bracketed", "skipped"]})
    assert exit_status(results.SweepResults(table, "/x"), laws=object()) == 0
    assert exit_status(results.SweepResults(table, "/x"), laws=None) == 1
    for bad in ("failed", "incomplete"):
        assert exit_status(results.SweepResults(table.assign(status=["ok", bad, "ok", "ok"]), "/x"), object()) == 1
