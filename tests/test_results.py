"""A sweep folder on disk -> the results table, and the sweep folder's guard rails.

The folders are written the way Ray Tune 2.60 lays out a sweep: one folder per trial
(named by the point id) holding params.json ({"point": ...}), result.json (one JSON object
per report, the last one `done`), and error.txt when the trial raised; plan.json beside
them. No Ray and no torch are needed to read it back.
"""

import json
import math
import os
import stat
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest

from flops_fit import results
from flops_fit import storage
from flops_fit import lease
from flops_fit import sweep_folder
from flops_fit.sweep_folder import SweepFolder
from flops_fit.plan import SweepPlan, SweepPoint, point_id
from flops_fit.task import Task
from driver_side import JOBS

BATCH_TOKENS = 512
BUDGET = 1e12
T0 = 1_795_000_000.0  # a start time in 2026 (Unix seconds)
# Non-embedding parameters of gpt(1 .. 5)
SIZES_PARAMS = {1: 7_216, 2: 32_928, 3: 95_568, 4: 213_568, 5: 405_360}


def make_point(size, budget=BUDGET):
    params = SIZES_PARAMS[size]
    fpt = 6.0 * params
    steps = round(budget / fpt / BATCH_TOKENS)
    tokens = steps * BATCH_TOKENS
    return SweepPoint(point_id(budget, size), budget, size, params, fpt, steps, tokens, fpt * tokens)


def make_plan(sizes=(1, 2, 3, 4, 5), budget=BUDGET):
    return SweepPlan(tuple(make_point(s, budget) for s in sizes), BATCH_TOKENS, "non_embedding", "6N")


def progress(point, step, iteration=1, **extra):
    """One intermediate report as the worker loop sends it, with the keys Tune adds."""
    line = {
        "point_id": point.point_id, "status": "running", "step": step, "steps": point.steps,
        "tokens": step * BATCH_TOKENS, "flops": step * BATCH_TOKENS * point.flops_per_token,
        "train_loss": 4.0, "lr": 1e-3, "tokens_per_s": 2.5e5, "attempts": 1, "started_at": T0,
        "num_processes": 2, "shards_disjoint": True, "node": "worker-1", "node_id": "9f3a",
        "done": False, "training_iteration": iteration, "trial_id": "a1b2c_00000",
        "timestamp": int(T0) + iteration, "time_total_s": float(iteration),
    }
    line.update(extra)
    return line


def final(point, status="ok", loss=2.75, **extra):
    line = progress(point, point.steps, iteration=3, status=status, loss=loss, finished_at=T0 + 60.0, final=True)
    line.update(extra)
    return line


TRACEBACK = """Failure # 1 (occurred at 2026-11-25_10-31-07)
ray::ImplicitFunc.train() (pid=4242, ip=10.0.0.7, actor_id=abc, repr=run_point)
  File "/venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 331, in train
    raise skipped from exception_cause(skipped)
  File "/work/flops_fit/train.py", line 85, in _train
    model = task.model_fn(point.size)
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def write_trial(sweep, point, lines=(), error=None, raw_results=None):
    """A trial folder as Tune writes it; raw_results replaces the JSON lines verbatim."""
    folder = sweep / point.point_id
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"point": asdict(point)}, indent=2, sort_keys=True))
    (folder / "params.pkl").write_bytes(b"\x80\x05not read")  # Tune writes it too; must be ignored
    text = raw_results if raw_results is not None else "".join(json.dumps(l) + "\n" for l in lines)
    (folder / "result.json").write_text(text)
    (folder / "progress.csv").write_text("step,tokens\n")
    if error is not None:
        (folder / "error.txt").write_text(error)
    return folder


@pytest.fixture
def stored_sweep(tmp_path):
    """Five planned points: ok, diverged, failed, still running, never started."""
    plan = make_plan()
    root = tmp_path / "storage" / "my-sweep"
    root.mkdir(parents=True)
    plan.to_json(root / sweep_folder.PLAN_FILE)
    p1, p2, p3, p4, _ = plan.points
    # folders written out of plan order: the table must follow the plan, not the disk
    write_trial(root, p4, [progress(p4, 10), progress(p4, 20, 2)])  # interrupted
    write_trial(root, p3, [progress(p3, 10)], error=TRACEBACK)
    write_trial(root, p1, [progress(p1, 100), progress(p1, 200, 2), final(p1)])
    write_trial(
        root, p2,
        [progress(p2, 10), final(p2, "diverged", float("nan"), error="training loss became nan at step 20")],
    )
    (root / "live").mkdir()  # a folder without params.json is not a trial
    (root / "experiment_state-2026-11-25_10-00-00.json").write_text("{}")
    (root / "task.json").write_text("{}")
    return root, plan


# --- the table ----------------------------------------------------------------------------


def test_one_row_per_planned_point_in_plan_order(stored_sweep):
    root, plan = stored_sweep
    res = results.load_results(root)
    assert list(res.table.columns) == results.COLUMNS
    assert list(res.table["point_id"]) == [p.point_id for p in plan]
    assert list(res.table["status"]) == ["ok", "diverged", "failed", "incomplete", "incomplete"]
    assert res.plan == plan
    assert list(res.ok["point_id"]) == [plan.points[0].point_id]
    assert res.status_line().startswith(f"Sweep {root}: 5 points: 1 ok, 1 diverged, 1 failed, 2 incomplete.")


def test_rows_carry_the_last_report_and_the_plan(stored_sweep):
    root, plan = stored_sweep
    t = results.load_results(root).table.set_index("point_id")
    p1, p2, p3, p4, p5 = plan.points
    ok = t.loc[p1.point_id]
    assert ok["loss"] == 2.75 and ok["error"] == ""
    assert ok["tokens"] == p1.tokens == ok["planned_tokens"]  # trained exactly the plan
    assert ok["flops"] == pytest.approx(p1.flops, rel=1e-12)
    assert (ok["steps"], ok["attempts"], ok["finished_at"]) == (p1.steps, 1, T0 + 60.0)
    assert (ok["budget"], ok["size"], ok["params"]) == (BUDGET, 1, p1.params)
    diverged = t.loc[p2.point_id]
    assert math.isnan(diverged["loss"]) and "training loss became nan" in diverged["error"]
    # an interrupted point keeps its progress: tokens so far, loss unknown
    running = t.loc[p4.point_id]
    assert running["tokens"] == 20 * BATCH_TOKENS and running["planned_tokens"] == p4.tokens
    assert math.isnan(running["loss"]) and running["error"].startswith("not finished")
    unstarted = t.loc[p5.point_id]
    assert unstarted["error"] == "not started" and math.isnan(unstarted["loss"])
    assert unstarted["planned_tokens"] == p5.tokens and pd.isna(unstarted["tokens"])


def test_a_failed_trial_shows_the_exception_not_the_frames(stored_sweep):
    root, plan = stored_sweep
    row = results.load_results(root).table.set_index("point_id").loc[plan.points[2].point_id]
    assert row["status"] == "failed" and math.isnan(row["loss"])
    assert row["error"].endswith("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert 'File "' not in row["error"] and "raise skipped" not in row["error"]
    assert row["tokens"] == 10 * BATCH_TOKENS  # how far it got


def test_a_final_result_wins_over_a_stale_error(tmp_path):
    # the point failed once (error.txt), then a rerun of the sweep finished it
    plan = make_plan((2,))
    (p,) = plan.points
    write_trial(tmp_path, p, [progress(p, 10), final(p, attempts=2)], error=TRACEBACK)
    plan.to_json(tmp_path / sweep_folder.PLAN_FILE)
    row = results.load_results(tmp_path).table.iloc[0]
    assert (row["status"], row["loss"], row["error"], row["attempts"]) == ("ok", 2.75, "", 2)


def test_an_error_without_any_report_is_failed(tmp_path):
    (p,) = make_plan((3,)).points
    write_trial(tmp_path, p, [], error="Failure # 1\nValueError: model_fn(3) raised\n")
    row = results.load_results(tmp_path).table.iloc[0]
    assert (row["status"], row["error"]) == ("failed", "ValueError: model_fn(3) raised")
    assert pd.isna(row["tokens"])


def test_trials_without_a_plan_still_load(tmp_path):
    p1, p2 = make_plan((1, 2)).points
    write_trial(tmp_path, p1, [final(p1)])
    write_trial(tmp_path, p2, [progress(p2, 5)])
    res = results.load_results(tmp_path)
    assert res.plan is None and list(res.table.columns) == results.COLUMNS
    assert sorted(zip(res.table["point_id"], res.table["status"])) == [
        (p1.point_id, "ok"), (p2.point_id, "incomplete")
    ]


def test_trials_without_a_plan_come_sorted_by_budget_then_size(tmp_path):
    small, large = make_plan((1, 2, 3)).points, make_plan((1, 2), budget=3 * BUDGET).points
    # written in an order no listing would sort back: larger budget and size first
    for p in (large[1], small[2], large[0], small[0], small[1]):
        write_trial(tmp_path, p, [final(p)])
    t = results.load_results(tmp_path).table
    assert list(zip(t["budget"], t["size"])) == [(BUDGET, 1), (BUDGET, 2), (BUDGET, 3), (3 * BUDGET, 1), (3 * BUDGET, 2)]


def test_a_plan_without_trials_lists_every_point_as_not_started(tmp_path):
    plan = make_plan()
    plan.to_json(tmp_path / sweep_folder.PLAN_FILE)
    t = results.load_results(tmp_path).table
    assert list(t["point_id"]) == [p.point_id for p in plan]
    assert set(t["status"]) == {"incomplete"} and set(t["error"]) == {"not started"}


def test_a_file_uri_reads_like_a_path(stored_sweep):
    root, _ = stored_sweep
    by_path = results.load_results(root).table
    by_uri = results.load_results(f"file://{root}").table
    pd.testing.assert_frame_equal(by_uri, by_path)


# --- damaged and missing files ------------------------------------------------------------


def test_a_last_line_cut_short_by_a_crash_is_skipped(tmp_path):
    (p,) = make_plan((2,)).points
    whole = json.dumps(progress(p, 30)) + "\n"
    cut = json.dumps(final(p))[:40]  # the process died while writing the final report
    write_trial(tmp_path, p, raw_results=whole + cut)
    row = results.load_results(tmp_path).table.iloc[0]
    assert row["status"] == "incomplete" and row["tokens"] == 30 * BATCH_TOKENS


def test_a_cut_short_last_line_followed_by_blank_lines_is_still_skipped(tmp_path):
    (p,) = make_plan((2,)).points
    whole = json.dumps(progress(p, 30)) + "\n"
    cut = json.dumps(final(p))[:40]
    write_trial(tmp_path, p, raw_results=whole + "\n" + cut + "\n\n  \n")
    row = results.load_results(tmp_path).table.iloc[0]
    assert row["status"] == "incomplete" and row["tokens"] == 30 * BATCH_TOKENS


def test_a_corrupt_line_in_the_middle_is_an_error_naming_the_file(tmp_path):
    (p,) = make_plan((2,)).points
    text = json.dumps(progress(p, 10)) + "\n{garbage\n" + json.dumps(final(p)) + "\n"
    folder = write_trial(tmp_path, p, raw_results=text)
    with pytest.raises(ValueError, match="line 2") as e:
        results.load_results(tmp_path)
    assert str(folder / "result.json") in str(e.value)


def test_a_corrupt_params_file_is_an_error_naming_it(tmp_path):
    (p,) = make_plan((2,)).points
    folder = write_trial(tmp_path, p, [final(p)])
    (folder / "params.json").write_text('{"not_point": 1}')
    with pytest.raises(ValueError, match="Corrupt trial file") as e:
        results.load_results(tmp_path)
    assert str(folder / "params.json") in str(e.value)


def test_a_missing_sweep_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-sweep"
    with pytest.raises(FileNotFoundError, match="no-such-sweep"):
        results.load_results(missing)


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match="no sweep trials"):
        results.load_results(tmp_path)


def test_an_empty_plan_file_is_reported_as_a_corrupt_plan(tmp_path):
    (tmp_path / sweep_folder.PLAN_FILE).write_text("")
    with pytest.raises(ValueError):
        results.load_results(tmp_path)


# --- results.csv --------------------------------------------------------------------------


def test_results_csv_is_written_atomically_and_round_trips(stored_sweep):
    root, plan = stored_sweep
    res = results.load_results(root)
    (root / sweep_folder.RESULTS_CSV).write_text("stale table\n")  # replaced, not appended to
    path = results.write_results_csv(res)
    assert path == str(root / sweep_folder.RESULTS_CSV)
    # no temporary file is left beside the table
    assert sorted(f.name for f in root.iterdir() if f.is_file()) == sorted(
        [sweep_folder.PLAN_FILE, sweep_folder.RESULTS_CSV, "task.json", "experiment_state-2026-11-25_10-00-00.json"]
    )
    back = pd.read_csv(path)
    assert list(back.columns) == results.COLUMNS
    for col in ("point_id", "status", "budget", "size", "params", "planned_tokens"):
        assert list(back[col]) == list(res.table[col])
    pd.testing.assert_series_equal(back["loss"], res.table["loss"])  # NaN stays NaN
    assert list(back["error"].fillna("")) == list(res.table["error"])
    assert list(back["tokens"].fillna(-1)) == list(res.table["tokens"].fillna(-1))


def test_results_csv_is_readable_as_the_umask_allows(stored_sweep):
    root, _ = stored_sweep
    old = os.umask(0o022)
    try:
        path = results.write_results_csv(results.load_results(root))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


# --- claiming a stored_sweep folder --------------------------------------------------------------


def no_model(size):
    return None


def no_data():
    return (), ()


def no_loss(model, batch):
    return 0.0


@pytest.fixture
def task():
    # SweepFolder.claim only records the task: factories that build nothing will do
    return Task(no_model, no_data, no_loss, tokens_per_sample=128, batch_size=4, lr=2e-3, extra={"note": "x"})


def test_claim_creates_the_folder_and_records_plan_and_task(tmp_path, task):
    plan = make_plan()
    sweep_dir = tmp_path / "storage" / "nested" / "my-sweep"
    SweepFolder(str(sweep_dir)).claim(plan, task)
    assert SweepPlan.from_json(sweep_dir / sweep_folder.PLAN_FILE) == plan
    recorded = json.loads((sweep_dir / sweep_folder.TASK_FILE).read_text())
    assert recorded["batch_size"] == 4 and recorded["lr"] == 2e-3 and recorded["betas"] == [0.9, 0.95]
    assert "no_model" in recorded["model_fn"]  # factories are recorded by name
    # write probe removed; the lock and the task's fingerprint beside plan and task
    assert sorted(os.listdir(sweep_dir)) == sorted([lease.LOCK_FILE, sweep_folder.PLAN_FILE, sweep_folder.TASK_FILE, sweep_folder.TASK_FINGERPRINT_FILE])
    # the folder loads as a sweep with every point still to run
    assert set(results.load_results(sweep_dir).table["error"]) == {"not started"}


def test_claim_accepts_the_same_plan_again(tmp_path, task):
    plan = make_plan()
    SweepFolder(str(tmp_path / "s")).claim(plan, task)
    before = (tmp_path / "s" / sweep_folder.PLAN_FILE).read_text()
    SweepFolder(str(tmp_path / "s")).claim(SweepPlan.from_json(before), task)  # resume
    assert (tmp_path / "s" / sweep_folder.PLAN_FILE).read_text() == before


@pytest.mark.parametrize("existing", ["other plan", "{not json"])
def test_claim_refuses_a_different_plan_and_says_what_to_do(tmp_path, task, existing):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    old = make_plan((1, 2, 3)).to_json() if existing == "other plan" else existing
    (sweep_dir / sweep_folder.PLAN_FILE).write_text(old)
    with pytest.raises(ValueError, match="different plan") as e:
        SweepFolder(str(sweep_dir)).claim(make_plan(), task)
    message = str(e.value)
    assert str(sweep_dir) in message
    assert "To resume it" in message and "plan.json" in message and "another name" in message
    assert (sweep_dir / sweep_folder.PLAN_FILE).read_text() == old  # the existing sweep is left as it was


def test_claim_refuses_a_path_that_cannot_be_a_folder(tmp_path, task):
    # tests run as root, where chmod cannot make a folder unwritable; a regular file can
    # never have a folder inside it
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="storage_path") as e:
        SweepFolder(str(blocker / "my-sweep")).claim(make_plan(), task)
    assert str(blocker / "my-sweep") in str(e.value)


def other_model(size):
    return None


def other_data():
    return (), ()


@pytest.mark.parametrize("change, named", [
    (dict(lr=3e-3), "lr: 0.002 then, 0.003 now"),
    (dict(model_fn=other_model), "model_fn"),
    (dict(data=other_data), "data"),
    (dict(extra={"note": "y"}), "extra"),
])
def test_claim_refuses_a_different_task_and_names_what_differs(tmp_path, task, change, named):
    import dataclasses

    plan = make_plan()
    SweepFolder(str(tmp_path / "s")).claim(plan, task).release()
    with pytest.raises(ValueError, match="different task") as e:
        SweepFolder(str(tmp_path / "s")).claim(plan, dataclasses.replace(task, **change))
    message = str(e.value)
    assert named in message and "another name" in message
    unchanged = [f for f in ("lr", "model_fn", "data", "extra", "batch_size") if f not in change]
    assert not any(f"{f}:" in message for f in unchanged), message
    SweepFolder(str(tmp_path / "s")).claim(plan, task).release()  # the task it began with resumes


def test_a_task_fingerprint_is_the_same_in_every_process(tmp_path):
    runs = [subprocess.run([sys.executable, str(JOBS / "task_fingerprint.py"), str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    first = json.loads(runs[0])
    assert runs[0] == runs[1]
    assert "GPT.from_size" in json.dumps(first["model_fn"]) and "0x" not in runs[0]
    assert first["data"].startswith("TextCorpus(") and "<lambda>" in first["lr"]


def test_a_second_driver_on_a_live_sweep_is_refused(tmp_path, task):
    plan = make_plan()
    claim = SweepFolder(str(tmp_path / "s")).claim(plan, task)
    with pytest.raises(RuntimeError, match=r"being run by another driver \(pid \d+") as e:
        SweepFolder(str(tmp_path / "s")).claim(plan, task)
    assert "another name" in str(e.value)
    claim.release()
    SweepFolder(str(tmp_path / "s")).claim(plan, task).release()  # free again once released


def test_a_driver_that_was_killed_leaves_no_lock_behind(tmp_path, task):
    import signal

    plan = make_plan()
    folder = tmp_path / "s"
    SweepFolder(str(folder)).claim(plan, task).release()
    holder = subprocess.Popen([sys.executable, str(JOBS / "hold_sweep_claim.py"), str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(RuntimeError, match=f"pid {holder.pid}"):
            SweepFolder(str(folder)).claim(plan, task)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    SweepFolder(str(folder)).claim(plan, task).release()  # the dead driver's lock went with it


def test_a_result_file_is_flushed_to_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    storage.write_text(str(tmp_path / "results.csv"), "a,b\n1,2\n")
    assert (tmp_path / "results.csv").read_text() == "a,b\n1,2\n"
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["fsync", "replace"], events
    assert events[0][1] == events[1][1]  # the temporary file itself was synced, then renamed


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("the old table\n")
    with pytest.raises(UnicodeEncodeError):
        storage.write_text(str(target), "half a table \ud800 that cannot be encoded")
    assert os.listdir(tmp_path) == ["results.csv"]
    assert target.read_text() == "the old table\n"


def test_a_finished_point_is_recorded_once_and_its_record_wins(stored_sweep):
    root, plan = stored_sweep
    p = plan.points[0]
    first = {"final": True, "status": "ok", "loss": 3.25, "tokens": p.tokens, "attempts": 1}
    assert SweepFolder(str(root)).write_finished(p.point_id, first) is True
    assert SweepFolder(str(root)).write_finished(p.point_id, {**first, "loss": 9.0}) is False
    assert SweepFolder(str(root)).read_finished(p.point_id)["loss"] == 3.25
    assert SweepFolder(str(root)).finished_ids() == {p.point_id}
    # Its trial folder may say otherwise (a later attempt's rows, an old error): the record wins.
    (root / p.point_id / "error.txt").write_text("RuntimeError: an earlier attempt failed\n")
    row = results.load_results(root).table.set_index("point_id").loc[p.point_id]
    assert (row.status, row.loss, row.error) == ("ok", 3.25, "")


def test_results_plan_and_search_import_neither_ray_nor_torch():
    # docs/architecture.md: a finished sweep can be re-analysed on a laptop without Ray
    code = (
        "import sys, flops_fit.results, flops_fit.plan, flops_fit.search\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
