"""The bracket-seeking search as a Ray Tune `Searcher` (Tune's public extension point).

Tune asks it for the next trial's config whenever a trial slot is free; the decisions are
`search.BracketSearch`'s. Its record lives in the sweep folder, so a killed driver resumes
the search when the same sweep is run again (`execute.run_sweep` starts a fresh Tuner over
the folder): `search/state.json` holds every point proposed (written before Tune starts
it), the skipped planned points and the decision log; the sweep's `finished/<id>.json`
records hold the results. A searcher built over a folder that holds a search takes both in:
finished points are not trained again, and points that were running when the driver died
are proposed again first, under their own ids (their Ray Train runs resume from their
checkpoints).

With a learning-rate search each point the search proposes is trained as sibling trials,
one per multiplier (`execute.trial_points`); the search hears of the point when all its
siblings have ended, with the best sibling's loss (`lr_search.choose`). Siblings recorded
as finished are never handed to Tune again.
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from .lr_search import choose
from .search import BracketSearch
from .contract import DIVERGED_STATUS, ENDED_STATUSES, FAILED_STATUS
from .sweep_folder import SweepFolder, ended

POINT_KEY = "point"  # the trial config holds the point under this key (as a planned sweep's)


class BracketSearcher(Searcher):
    """Tune searcher proposing the points of a `BracketSearch` over the sweep in `sweep_dir`."""

    def __init__(self, search: BracketSearch, sweep_dir: str, verbose: bool = True, trial_points=None):
        super().__init__(metric=None, mode=None)
        self.search, self.sweep_dir, self.verbose = search, sweep_dir, verbose
        # point dict -> its trial dicts (execute.trial_points: settings resolved, LR siblings)
        self.trial_points = trial_points or (lambda point: [point])
        self.trials: dict = {}  # Tune trial id -> trial (sibling) id
        self.pending: list = []  # trial dicts of proposed points not yet handed to Tune
        self.siblings: dict = {}  # point id -> {trial id: trial dict} of its trials
        self.ended: dict = {}  # trial id -> {"status", "loss"} of the trials that ended
        self.max_concurrent = 0  # 0: as many as Tune asks for
        self._sync_from_folder()

    @property
    def finished(self) -> bool:
        return not self.pending and self.search.finished

    # Tune's hooks ------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return not config  # the search space is the searcher's own: no param_space with it

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # limited here (a ConcurrencyLimiter's own bookkeeping is not needed)

    def suggest(self, trial_id: str):
        running = [t for t in self.trials.values() if t not in self.ended]
        if self.max_concurrent and len(running) >= self.max_concurrent:
            return None
        while not self.pending:  # a point whose trials all ended earlier adds none
            point = self.search.next_point()
            self._write()
            if point is None:
                return Searcher.FINISHED if self.finished else None
            self._expand(point)
        trial = self.pending.pop(0)
        self.trials[trial_id] = trial["point_id"]
        return {POINT_KEY: trial}

    def _expand(self, point: dict) -> None:
        """Queue the trials of a proposed point, less those that ended in an earlier run."""
        trials = self.trial_points(point)
        self.siblings[point["point_id"]] = {t["point_id"]: t for t in trials}
        self.pending += [t for t in trials if t["point_id"] not in self.ended]
        self._settle(point["point_id"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        tid = self.trials.get(trial_id)
        if tid is None:
            return
        result = result or {}
        if not error and ended(result):
            self.ended[tid] = {"status": result["status"], "loss": result.get("loss")}
        else:
            self.ended[tid] = {"status": FAILED_STATUS, "loss": None}
        for pid, trials in self.siblings.items():
            if tid in trials:
                self._settle(pid)
        self._write()

    def _settle(self, pid: str) -> None:
        """Tell the search about point `pid` once every one of its trials has ended: the
        best sibling's loss, failed if any sibling failed (a rerun retries it)."""
        trials = self.siblings.get(pid, {})
        if pid in self.search.results or not trials or any(t not in self.ended for t in trials):
            return
        self.search.record(pid, *_point_result(list(trials.values()), self.ended))

    # Tune saves its searcher with each experiment checkpoint; the folder stays the record
    # a rerun resumes from (a rerun builds a fresh Tuner, see execute.py).
    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"search": self.search, "trials": self.trials, "pending": self.pending,
                         "siblings": self.siblings, "ended": self.ended}, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.search, self.trials = state["search"], state["trials"]
        self.pending, self.siblings, self.ended = state["pending"], state["siblings"], state["ended"]
        self._sync_from_folder()

    # The sweep folder ----------------------------------------------------------------------
    def _sync_from_folder(self):
        saved = SweepFolder(self.sweep_dir).read_search()
        proposed = saved.get("proposed", []) if saved else []
        records = SweepFolder(self.sweep_dir).finished_records()
        for tid, metrics in records.items():
            self.ended[tid] = {"status": metrics["status"], "loss": metrics.get("loss")}
        # A point finished when all its trials did: the search takes in its best sibling.
        points = {}
        for p in proposed:
            trials = self.trial_points(p)
            if all(t["point_id"] in self.ended for t in trials):
                status, loss = _point_result(trials, self.ended)
                points[p["point_id"]] = {"status": status, "loss": loss}
        self.search.sync(proposed, points)
        if saved:
            self.search.skipped.update(saved.get("skipped", {}))
            # The decision log so far; lines already printed by the earlier run are not
            # printed again.
            if len(saved.get("log", [])) > len(self.search.log):
                self.search.log = list(saved["log"])
        self._printed = len(self.search.log)

    def _write(self):
        SweepFolder(self.sweep_dir).write_search(self.search.state())
        if self.verbose:
            for line in self.search.log[self._printed:]:
                print(f"  search: {line}", flush=True)
            self._printed = len(self.search.log)


def _point_result(trials: list, ended: dict) -> tuple:
    """(status, loss) of a point from its ended trials: the one trial as it ended, or of LR
    siblings the best finished one (lr_search.choose); failed if any sibling failed."""
    if len(trials) == 1 and "lr_multiplier" not in trials[0]:
        res = ended[trials[0]["point_id"]]
        return res["status"], res.get("loss")
    rows = sorted(trials, key=lambda t: t["lr_multiplier"])
    results = [ended[t["point_id"]] for t in rows]
    if any(r["status"] not in ENDED_STATUSES for r in results):
        return FAILED_STATUS, None
    choice = choose([t["lr_multiplier"] for t in rows],
                    [r["loss"] if r.get("loss") is not None else float("nan") for r in results],
                    [r["status"] for r in results])
    if choice.best is None:
        return DIVERGED_STATUS, None
    return "ok", results[choice.best]["loss"]
