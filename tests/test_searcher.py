"""The Tune searcher's bookkeeping across a killed driver (Tune's API called directly; no
Ray cluster is started: the searcher is plain Python that Tune calls)."""

import json

from flops_fit.sweep_folder import SEARCH_FILE, SweepFolder
from flops_fit.searcher import BracketSearcher
from flops_fit.search import BracketSearch
from ray.tune.search import Searcher
from test_search import BUDGETS, SIZES, law_loss, make_plan, prior_sizes


def finish(searcher, sweep, trial_id, point):
    """What a finished trial leaves: its finished/<id>.json record, then Tune's call."""
    metrics = {"point_id": point["point_id"], "status": "ok", "final": True,
               "loss": law_loss(point["params"], point["tokens"])}
    SweepFolder(str(sweep)).write_finished(point["point_id"], metrics)
    searcher.on_trial_complete(trial_id, metrics)


def new_searcher(sweep, plan):
    s = BracketSearcher(BracketSearch(plan, SIZES, max_points=35), str(sweep), verbose=False)
    s.set_max_concurrency(2)
    return s


def drive(searcher, sweep, prefix, running=(), stop_after=None):
    """Tune's loop with two slots; returns every point id the searcher proposed."""
    running, proposed, n = list(running), [], 0
    while True:
        while True:
            config = searcher.suggest(f"{prefix}{n}")
            if not isinstance(config, dict):
                break
            running.append((f"{prefix}{n}", config["point"]))
            proposed.append(config["point"]["point_id"])
            n += 1
        if config == Searcher.FINISHED or not running:
            return proposed, running
        if stop_after is not None and len(list((sweep / "finished").glob("*.json"))) >= stop_after:
            return proposed, running
        finish(searcher, sweep, *running.pop(0))


def test_a_fresh_searcher_over_a_killed_search_retrains_nothing_and_resumes_the_interrupted(tmp_path):
    plan = make_plan(BUDGETS, prior_sizes(300))
    first = new_searcher(tmp_path, plan)
    # Killed once two budgets are settled (their verdicts logged) and two points are running.
    before, interrupted = drive(first, tmp_path, "a", stop_after=18)
    assert len(interrupted) == 2
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert [p["point_id"] for p in record["proposed"]] == before  # on disk before they ran
    assert sum(": bracketed," in line for line in record["log"]) == 2

    again = new_searcher(tmp_path, plan)  # the driver was killed: a new one reads the folder
    after, _ = drive(again, tmp_path, "b")
    assert after[:2] == [p["point_id"] for _, p in interrupted]  # first, under their own ids
    finished_before = set(before) - set(after[:2])
    assert not finished_before & set(after)  # nothing finished is proposed again
    assert len(set(before) | set(after)) == len(before) + len(after) - 2 <= 35
    assert all(again.search.valley(b).fit_bracketed for b in BUDGETS)
    log = json.loads((tmp_path / SEARCH_FILE).read_text())["log"]
    assert record["log"] == log[:len(record["log"])]  # the first run's decisions, kept
    assert len(log) == len(set(log))  # and not logged again when re-judged after the restart


def test_a_restored_searcher_leaves_the_running_trials_to_tune(tmp_path):
    plan = make_plan(BUDGETS, prior_sizes(300))
    first = new_searcher(tmp_path, plan)
    _, running = drive(first, tmp_path, "a", stop_after=8)
    first.save(str(tmp_path / "searcher.pkl"))

    restored = new_searcher(tmp_path, plan)
    restored.restore(str(tmp_path / "searcher.pkl"))
    # Tune resumes the running trials itself (same trial ids); the searcher proposes others.
    after, _ = drive(restored, tmp_path, "b", running=running)
    assert not {p["point_id"] for _, p in running} & set(after)
    assert all(restored.search.valley(b).fit_bracketed for b in BUDGETS)


def test_a_sweep_resumes_only_the_way_it_started_and_search_names_are_checked(tmp_path):
    import pytest

    import flops_fit as ff
    from worker_side import tiny_task

    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e9], sizes=[1, 2, 3])
    with pytest.raises(ValueError, match="search='grid'"):
        ff.run_sweep(task, plan, name="s", storage_path=tmp_path, dry_run=True, search="grid")
    with pytest.raises(ValueError, match=r"BracketSearchOptions\(sizes=\.\.\.\): 0 is not a positive int"):
        ff.run_sweep(task, plan, name="s", storage_path=tmp_path, dry_run=True,
                     search=ff.BracketSearchOptions(sizes=[0, 5]))
    with pytest.raises(ValueError, match=r"BracketSearchOptions\(max_points=2\) must be an int >= 3"):
        ff.BracketSearchOptions(max_points=2)
    searched = tmp_path / "searched"
    (searched / SEARCH_FILE).parent.mkdir(parents=True)
    (searched / SEARCH_FILE).write_text(json.dumps({"proposed": [], "skipped": {}, "log": []}))
    with pytest.raises(ValueError, match="started with a bracket search"):
        ff.run_sweep(task, plan, name="searched", storage_path=tmp_path, dry_run=True)
    SweepFolder(str(tmp_path / "static")).write_finished(plan.points[0].point_id, {"status": "ok", "final": True})
    with pytest.raises(ValueError, match="started without a search"):
        ff.run_sweep(task, plan, name="static", storage_path=tmp_path, dry_run=True,
                     search=ff.BracketSearchOptions())


def test_the_older_search_keywords_still_work_and_warn(tmp_path):
    import warnings

    import pytest

    import flops_fit as ff
    from flops_fit.sweep_checks import search_options

    with pytest.warns(DeprecationWarning, match=r"search=flops_fit\.BracketSearchOptions\(max_points=\.\.\., sizes="):
        options = search_options("bracket", {"max_points": 12, "search_sizes": range(1, 9)})
    assert options == ff.BracketSearchOptions(max_points=12, sizes=tuple(range(1, 9)))
    with pytest.warns(DeprecationWarning):
        assert search_options("bracket", {}) == ff.BracketSearchOptions()
    with pytest.warns(DeprecationWarning):  # the static plan, with the older keywords left at None
        assert search_options(None, {"max_points": None}) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new form warns of nothing
        assert search_options(ff.BracketSearchOptions(max_points=9), {}).max_points == 9
        assert search_options(None, {}) is None
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="bound a search"):
        search_options(None, {"max_points": 12})
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"give them as BracketSearchOptions"):
        search_options(ff.BracketSearchOptions(), {"search_sizes": [1, 2]})
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_point'"):
        search_options(None, {"max_point": 12})
    # through run_sweep itself: the older form reaches the same checks (refused before Ray)
    from worker_side import tiny_task

    task = tiny_task(tmp_path)
    plan = ff.plan_sweep(task, [1e9], sizes=[1, 2, 3])
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"BracketSearchOptions\(sizes=\.\.\.\)"):
        ff.run_sweep(task, plan, name="s", storage_path=tmp_path, dry_run=True, search="bracket",
                     search_sizes=[0, 5])


def test_a_searcher_with_lr_siblings_hears_of_a_point_once_all_its_siblings_ended(tmp_path):
    from flops_fit.lr_search import point_of, sibling_id

    multipliers = (0.5, 1.0, 2.0)

    def siblings(point):  # what execute.trial_points makes of a point with lr_search
        return [{**point, "point_id": sibling_id(point["point_id"], m), "lr": 1e-2 * m, "lr_multiplier": m}
                for m in multipliers]

    def new(sweep):
        s = BracketSearcher(BracketSearch(plan, SIZES, max_points=35), str(sweep), verbose=False,
                            trial_points=siblings)
        s.set_max_concurrency(2)
        return s

    def finish_sibling(searcher, trial_id, trial):
        # the LR valley at 1x: the best sibling is the middle one, its loss the law's
        m = trial["lr_multiplier"]
        metrics = {"point_id": trial["point_id"], "status": "ok", "final": True,
                   "loss": law_loss(trial["params"], trial["tokens"]) + 0.1 * (m != 1.0)}
        SweepFolder(str(tmp_path)).write_finished(trial["point_id"], metrics)
        searcher.on_trial_complete(trial_id, metrics)

    plan = make_plan(BUDGETS, prior_sizes(300))
    first = new(tmp_path)
    handed, running, n = [], [], 0
    while len(handed) < 10:  # killed after ten trials were handed out, two still running
        config = first.suggest(f"a{n}")
        assert isinstance(config, dict)
        running.append((f"a{n}", config["point"]))
        handed.append(config["point"]["point_id"])
        n += 1
        if len(running) == 2 and len(handed) < 10:
            finish_sibling(first, *running.pop(0))
    point = point_of(handed[0])
    assert handed[:3] == [sibling_id(point, m) for m in multipliers]  # a point's siblings, together
    assert first.search.results[point] == {"status": "ok", "loss": law_loss(*[
        (p["params"], p["tokens"]) for p in first.search.proposed.values() if p["point_id"] == point][0])}
    finished = {p.stem for p in (tmp_path / "finished").glob("*.json")}
    assert len(finished) == 8

    again = new(tmp_path)  # a new driver over the folder
    after, m = [], 0
    while True:
        config = again.suggest(f"b{m}")
        if not isinstance(config, dict):
            break
        after.append(config["point"]["point_id"])
        finish_sibling(again, f"b{m}", config["point"])
        m += 1
    assert config == Searcher.FINISHED
    assert not finished & set(after)  # no finished sibling is trained again
    assert {t for _, t in [(i, p["point_id"]) for i, p in running]} <= set(after)  # the interrupted ones are
    every = {point_of(t) for t in finished | set(after)}
    assert every == set(again.search.results) and all(r["status"] == "ok" for r in again.search.results.values())
