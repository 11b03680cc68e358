"""Tune callbacks of a sweep, run in the sweep driver: progress lines, the results files,
the live fit, the sweep's metrics for Ray's dashboard, and the check of callbacks a user
passes to `run_sweep(callbacks=...)`.

Every table here is rebuilt from the sweep folder (`results.load_results`), the one place
results are read from; a finished point's metrics are written once, to
`finished/<point id>.json`, the moment Tune sees it finish.
"""

from __future__ import annotations

import math
import threading
import time

from ray import tune

from . import results
from .contract import DIVERGED_STATUS, FAILED_STATUS, OK_STATUS
from .plan import SweepPlan
from .storage import is_uri
from .sweep_folder import SweepFolder, ended

# A failed point's progress line ends with its error, cut to this many characters (the whole
# text is in results.csv's error column).
ERROR_SHOWN_CHARS = 200


def trial_point_id(trial) -> str:
    """The sweep point a Tune trial trains (its config holds the point)."""
    return trial.config["point"]["point_id"]


class ProgressPrinter(tune.Callback):
    """One line per finished point: id, status, loss, time, and how many remain; a failed
    point's line ends with its error (from the trial's error.txt in `sweep_dir`)."""

    def __init__(self, total: int, already_done: int = 0, bound: bool = False, sweep_dir: str | None = None):
        # A search's total is a bound, not known in advance: shown as "<=35".
        self.total = f"<={total}" if bound else total
        self.done = already_done  # finished by an earlier run of the same sweep
        self.sweep_dir = sweep_dir
        self.t0 = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, trial.last_result or {}, error=True)

    def _line(self, trial, result, error=False):
        self.done += 1
        status = FAILED_STATUS if error else result.get("status", "?")
        loss = result.get("loss")
        loss_text = f"loss {loss:.4f}" if isinstance(loss, float) else "no loss"
        why = result.get("error") or ""  # a diverged point says why in its own report
        if error:
            why = _trial_error(trial, self.sweep_dir) or why
        print(
            f"[{self.done}/{self.total}] {trial_point_id(trial):<18} {status:<8} {loss_text}  "
            f"{results.hardware_use(result)}({time.time() - self.t0:.0f} s)"
            + (f"  {why[:ERROR_SHOWN_CHARS]}" if why else ""),
            flush=True,
        )


def _trial_error(trial, sweep_dir: str | None) -> str:
    """A failed trial's error as the table shows it. Tune writes error.txt in the trial's
    local folder before it calls on_trial_error (`Trial.error_file`, DeveloperAPI) and copies
    it to the sweep folder later; the sweep folder is the fallback."""
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return results.short_error(f.read())
        except OSError:
            pass
    return results.point_error(sweep_dir, trial_point_id(trial)) if sweep_dir else ""


class ResultsWriter(tune.Callback):
    """Record each finished point once (`finished/<id>.json`) and rewrite
    `<sweep>/results.csv` from the sweep folder each time a point finishes or fails."""

    def __init__(self, sweep_dir: str, plan: SweepPlan):
        self.sweep_dir, self.plan = sweep_dir, plan

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if ended(last):
            from ray.tune.result import AUTO_RESULT_KEYS

            # Tune's own keys (trial id, timings, its pid) describe this run, not the point.
            mine = {k: v for k, v in last.items() if k not in AUTO_RESULT_KEYS + ("trial_id", "experiment_tag")}
            SweepFolder(self.sweep_dir).write_finished(trial_point_id(trial), mine)
        results.write_results_csv(results.load_results(self.sweep_dir))

    def on_trial_error(self, iteration, trials, trial, **info):
        results.write_results_csv(results.load_results(self.sweep_dir))


class LiveFit(tune.Callback):
    """Refit and rewrite the table and plots in `<sweep>/live/` as points finish.

    The fit runs in a background thread so that Tune keeps scheduling; a point finishing
    while a fit runs triggers one more fit afterwards.
    """

    def __init__(self, sweep_dir: str, plan: SweepPlan, verbose: bool = True, bootstrap: int = 200,
                 on_fit=None):
        self.sweep_dir, self.plan, self.verbose, self.bootstrap = sweep_dir, plan, verbose, bootstrap
        self.on_fit = on_fit  # called with each new fit (SweepMetrics.record_fit)
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
        from .report import write_report

        table = results.load_results(self.sweep_dir).table
        try:
            laws = fit(table, bootstrap=self.bootstrap)
        except FitError:  # not enough finished points yet: nothing to draw
            return
        if self.on_fit is not None:
            self.on_fit(laws)
        live = SweepFolder(self.sweep_dir).live_dir
        if is_uri(live):
            # A sweep in a bucket keeps no live/ folder (each finished point would upload
            # every plot again); `flops-fit fit URI` fits it from where it is.
            return
        try:
            write_report(live, laws)
        except FitError as err:  # rows a log axis cannot draw: the table and summary still stand
            if self.verbose:
                print(f"  live fit: no plots ({err})", flush=True)
            write_report(live, laws, plots=False)
        if self.verbose:
            print(f"  live fit ({(table.status == 'ok').sum()} points) -> {live}", flush=True)


# --- metrics for Ray's dashboard and Prometheus ------------------------------------------
# Tune callbacks that run on the sweep's driver: the sweep's metrics for Ray's dashboard
# and Prometheus, and the check of callbacks a user passes to `run_sweep(callbacks=...)`.
#
# Metrics go through `ray.util.metrics`, Ray's public metrics API: Ray exports them on each
# node's metrics endpoint (`ray.nodes()[i]["MetricsExportPort"]`, path /metrics) in Prometheus
# format, with the prefix `ray_`, a few seconds after they are set (Ray flushes periodically).
# Ray's Grafana panels (the dashboard's Metrics view) and any Prometheus that scrapes the
# cluster see them by these names:
#
#     ray_flops_fit_points{sweep, state}        points by state: finished (ok), diverged,
#                                               failed, running, pending
#     ray_flops_fit_tokens_per_second{sweep}    training throughput of the running points,
#                                               summed (tokens per second)
#     ray_flops_fit_exponent_a{sweep, bound}    the live fit's N_opt ~ C^a (IsoFLOP minima,
#                                               Hoffmann et al. 2022 Approach 2); bound is
#                                               value, low, high (bootstrap interval)


METRIC_PREFIX = "flops_fit_"
POINT_STATES = ("finished", "diverged", "failed", "running", "pending")
# A point's final status (train.py) -> its state in the metrics.
FINAL_STATE = {OK_STATUS: "finished", DIVERGED_STATUS: "diverged"}


def check_callbacks(callbacks) -> list:
    """The user's extra Tune callbacks as a list; a clear error, before Ray starts, for
    anything else (a Tune callback that fails only when Tune calls it wastes the sweep)."""
    if isinstance(callbacks, tune.Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"run_sweep(callbacks={callbacks!r}) must be a list of ray.tune.Callback objects, "
            "e.g. callbacks=[MLflowLoggerCallback(tracking_uri=...)]."
        )
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, tune.Callback):
            hint = " (an instance, not the class: add ())" if isinstance(cb, type) else ""
            raise TypeError(
                f"run_sweep(callbacks=[...]): item {i} is {cb!r}, not a ray.tune.Callback{hint}. "
                "Pass Tune callbacks such as ray.air.integrations.mlflow.MLflowLoggerCallback, "
                "ray.air.integrations.wandb.WandbLoggerCallback or ray.tune.logger.CSVLoggerCallback."
            )
    return list(callbacks)


class SweepMetrics(tune.Callback):
    """Exports the sweep's progress as `ray.util.metrics` gauges (see the module docstring).

    `record_fit(laws)` is called by the live fit with each new fit; without a live fit the
    exponent gauges stay unset.
    """

    def __init__(self, sweep: str, total: int):
        self.sweep = sweep
        self.total = total  # points in all (a search's max_points: pending is then an upper bound)
        self._state: dict = {}  # point id -> one of POINT_STATES
        self._rate: dict = {}  # point id -> latest tokens per second while it runs
        self._lock = threading.Lock()

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment; the lock stays behind.
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def setup(self, **info):
        self._publish()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rate = result.get("tokens_per_s")
        if isinstance(rate, (int, float)) and math.isfinite(rate) and not result.get("final"):
            with self._lock:
                self._rate[trial_point_id(trial)] = float(rate)
        self._publish()

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = (trial.last_result or {}).get("status")
        self._set(trial, FINAL_STATE.get(status, "failed"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set(trial, "failed")

    def record_fit(self, laws) -> None:
        """Publish the exponent a of a new live fit (value and bootstrap interval)."""
        if laws.isoflop is None:  # the parametric law alone so far: no IsoFLOP exponent yet
            return
        a = laws.isoflop.a
        gauges = _gauges()
        for bound in ("value", "low", "high"):
            x = getattr(a, bound)
            if math.isfinite(x):  # no interval before the bootstrap has enough budgets
                gauges["a"].set(float(x), tags={"sweep": self.sweep, "bound": bound})

    def _set(self, trial, state: str) -> None:
        with self._lock:
            self._state[trial_point_id(trial)] = state
            if state != "running":
                self._rate.pop(trial_point_id(trial), None)
        self._publish()

    def _publish(self) -> None:
        gauges = _gauges()
        with self._lock:
            counts = {s: 0 for s in POINT_STATES}
            for s in self._state.values():
                counts[s] += 1
            counts["pending"] = max(0, self.total - len(self._state))
            rate = sum(self._rate.values())
        for state, n in counts.items():
            gauges["points"].set(n, tags={"sweep": self.sweep, "state": state})
        gauges["rate"].set(rate, tags={"sweep": self.sweep})


_GAUGES: dict = {}  # one set per process: every sweep a driver runs shares them (tag "sweep")
_GAUGES_LOCK = threading.Lock()


def _gauges() -> dict:
    # Created on first use, in the driver after Ray has started (metric objects need a
    # connected Ray and do not pickle), and once: a name is registered once per process.
    with _GAUGES_LOCK:
        if not _GAUGES:
            from ray.util.metrics import Gauge

            _GAUGES.update(
                points=Gauge(METRIC_PREFIX + "points", "Sweep points by state.", tag_keys=("sweep", "state")),
                rate=Gauge(METRIC_PREFIX + "tokens_per_second",
                           "Training tokens per second of the sweep's running points, summed.",
                           tag_keys=("sweep",)),
                a=Gauge(METRIC_PREFIX + "exponent_a",
                        "Live fit: N_opt ~ C^a from the IsoFLOP minima; bound = value, low, high.",
                        tag_keys=("sweep", "bound")),
            )
        return _GAUGES

