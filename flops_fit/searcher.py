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
"""

from __future__ import annotations

import json
import pickle

from ray.tune.search import Searcher

from . import results as R
from .search import BracketSearch

POINT_KEY = "point"  # the trial config holds the point under this key (as a planned sweep's)


class BracketSearcher(Searcher):
    """Tune searcher proposing the points of a `BracketSearch` over the sweep in `sweep_dir`."""

    def __init__(self, search: BracketSearch, sweep_dir: str, verbose: bool = True):
        super().__init__(metric=None, mode=None)
        self.search, self.sweep_dir, self.verbose = search, sweep_dir, verbose
        self.trials: dict = {}  # Tune trial id -> point id
        self.max_concurrent = 0  # 0: as many as Tune asks for
        self._sync_from_folder()

    # Tune's hooks ------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return not config  # the search space is the searcher's own: no param_space with it

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # limited here (a ConcurrencyLimiter's own bookkeeping is not needed)

    def suggest(self, trial_id: str):
        if self.max_concurrent and len(self.search.live) >= self.max_concurrent:
            return None
        point = self.search.next_point()
        self._write()
        if point is None:
            return Searcher.FINISHED if self.search.finished else None
        self.trials[trial_id] = point["point_id"]
        return {POINT_KEY: point}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pid = self.trials.get(trial_id)
        if pid is None:
            return
        result = result or {}
        if not error and R.ended(result):
            self.search.record(pid, result["status"], result.get("loss"))
        else:
            self.search.record(pid, "failed")
        self._write()

    # Tune saves its searcher with each experiment checkpoint; the folder stays the record
    # a rerun resumes from (a rerun builds a fresh Tuner, see execute.py).
    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"search": self.search, "trials": self.trials}, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.search, self.trials = state["search"], state["trials"]
        self._sync_from_folder()

    # The sweep folder ----------------------------------------------------------------------
    def _sync_from_folder(self):
        saved = R.read_search(self.sweep_dir)
        proposed = saved.get("proposed", []) if saved else []
        self.search.sync(proposed, R.finished_records(self.sweep_dir))
        if saved:
            self.search.skipped.update(saved.get("skipped", {}))
            # The decision log so far; lines already printed by the earlier run are not
            # printed again.
            if len(saved.get("log", [])) > len(self.search.log):
                self.search.log = list(saved["log"])
        self._printed = len(self.search.log)

    def _write(self):
        R.write_text_atomic(R.join(self.sweep_dir, R.SEARCH_FILE), json.dumps(self.search.state(), indent=1))
        if self.verbose:
            for line in self.search.log[self._printed:]:
                print(f"  search: {line}", flush=True)
            self._printed = len(self.search.log)
