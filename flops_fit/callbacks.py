"""Tune callbacks of a sweep, run in the sweep driver: progress lines, the results files,
the live fit.

Every table here is rebuilt from the sweep folder (`results.load_results`), the one place
results are read from; a finished point's metrics are written once, to
`finished/<point id>.json`, the moment Tune sees it finish.
"""

from __future__ import annotations

import threading
import time

from ray import tune

from . import results as R
from .plan import SweepPlan


def point_id(trial) -> str:
    """The sweep point a Tune trial trains (its config holds the point)."""
    return trial.config["point"]["point_id"]


class ProgressPrinter(tune.Callback):
    """One line per finished point: id, status, loss, time, and how many remain."""

    def __init__(self, plan: SweepPlan, already_done: int = 0):
        self.total = len(plan)
        self.done = already_done  # finished by an earlier run of the same sweep
        self.t0 = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result or {}, error=True)

    def _line(self, trial, result, error=False):
        self.done += 1
        status = "failed" if error else result.get("status", "?")
        loss = result.get("loss")
        loss_text = f"loss {loss:.4f}" if isinstance(loss, float) else "no loss"
        print(
            f"[{self.done}/{self.total}] {point_id(trial):<18} {status:<8} {loss_text}  "
            f"{R.hardware_use(result)}({time.time() - self.t0:.0f} s)",
            flush=True,
        )


class ResultsWriter(tune.Callback):
    """Record each finished point once (`finished/<id>.json`) and rewrite
    `<sweep>/results.csv` from the sweep folder each time a point finishes or fails."""

    def __init__(self, sweep_dir: str, plan: SweepPlan):
        self.sweep_dir, self.plan = sweep_dir, plan

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("final") and last.get("status") in ("ok", "diverged"):
            from ray.tune.result import AUTO_RESULT_KEYS

            # Tune's own keys (trial id, timings, its pid) describe this run, not the point.
            mine = {k: v for k, v in last.items() if k not in AUTO_RESULT_KEYS + ("trial_id", "experiment_tag")}
            R.write_finished(self.sweep_dir, point_id(trial), mine)
        R.write_results_csv(R.load_results(self.sweep_dir))

    def on_trial_error(self, iteration, trials, trial, **info):
        R.write_results_csv(R.load_results(self.sweep_dir))


class LiveFit(tune.Callback):
    """Refit and rewrite the table and plots in `<sweep>/live/` as points finish.

    The fit runs in a background thread so that Tune keeps scheduling; a point finishing
    while a fit runs triggers one more fit afterwards.
    """

    def __init__(self, sweep_dir: str, plan: SweepPlan, verbose: bool = True, bootstrap: int = 200):
        self.sweep_dir, self.plan, self.verbose, self.bootstrap = sweep_dir, plan, verbose, bootstrap
        self._thread = None
        self._again = False
        self._lock = threading.Lock()

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment; threads and locks stay behind.
        return {k: v for k, v in self.__dict__.items() if k not in ("_thread", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _thread=None, _lock=threading.Lock())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._kick()

    def on_experiment_end(self, trials, **info):
        if self._thread is not None:
            self._thread.join()

    def _kick(self):
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._loop, name="flops_fit-live-fit", daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            self._fit_once()
            with self._lock:
                if not self._again:
                    return
                self._again = False

    def _fit_once(self):
        from .fitting import FitError, fit

        table = R.load_results(self.sweep_dir).table
        try:
            laws = fit(table, bootstrap=self.bootstrap)
        except FitError:  # not enough finished points yet: nothing to draw
            return
        live = R.join(self.sweep_dir, "live")
        if "://" in live:
            return  # plots are drawn on local disk; fit a remote sweep with `flops-fit fit URI`
        laws.plot(live)
        R.write_text_atomic(R.join(live, "table.md"), laws.table() + "\n")
        R.write_text_atomic(R.join(live, "summary.txt"), laws.summary() + "\n")
        if self.verbose:
            print(f"  live fit ({(table.status == 'ok').sum()} points) -> {live}", flush=True)
