"""Tune callbacks that run on the sweep's driver: the sweep's metrics for Ray's dashboard
and Prometheus, and the check of callbacks a user passes to `run_sweep(callbacks=...)`.

Metrics go through `ray.util.metrics`, Ray's public metrics API: Ray exports them on each
node's metrics endpoint (`ray.nodes()[i]["MetricsExportPort"]`, path /metrics) in Prometheus
format, with the prefix `ray_`, a few seconds after they are set (Ray flushes periodically).
Ray's Grafana panels (the dashboard's Metrics view) and any Prometheus that scrapes the
cluster see them by these names:

    ray_flops_fit_points{sweep, state}        points by state: finished (ok), diverged,
                                              failed, running, pending
    ray_flops_fit_tokens_per_second{sweep}    training throughput of the running points,
                                              summed (tokens per second)
    ray_flops_fit_exponent_a{sweep, bound}    the live fit's N_opt ~ C^a (IsoFLOP minima,
                                              Hoffmann et al. 2022 Approach 2); bound is
                                              value, low, high (bootstrap interval)
"""

from __future__ import annotations

import math
import threading

from ray import tune

METRIC_PREFIX = "flops_fit_"
POINT_STATES = ("finished", "diverged", "failed", "running", "pending")
# A point's final status (train.py) -> its state in the metrics.
FINAL_STATE = {"ok": "finished", "diverged": "diverged"}


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

    def __init__(self, sweep: str, plan):
        self.sweep = sweep
        self.total = len(plan)
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
                self._rate[_point_id(trial)] = float(rate)
        self._publish()

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = (trial.last_result or {}).get("status")
        self._set(trial, FINAL_STATE.get(status, "failed"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set(trial, "failed")

    def record_fit(self, laws) -> None:
        """Publish the exponent a of a new live fit (value and bootstrap interval)."""
        a = laws.isoflop.a
        gauges = _gauges()
        for bound in ("value", "low", "high"):
            x = getattr(a, bound)
            if math.isfinite(x):  # no interval before the bootstrap has enough budgets
                gauges["a"].set(float(x), tags={"sweep": self.sweep, "bound": bound})

    def _set(self, trial, state: str) -> None:
        with self._lock:
            self._state[_point_id(trial)] = state
            if state != "running":
                self._rate.pop(_point_id(trial), None)
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


def _point_id(trial) -> str:
    return trial.config["point"]["point_id"]
