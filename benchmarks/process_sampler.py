"""A thread that samples the machine's processes while a `with` block runs (psutil), shared
by the benchmarks that attribute CPU time or memory to kinds of Ray process."""

from __future__ import annotations

import threading


class ProcessSampler:
    """Calls `sample()` every `interval_s` seconds from a background thread while the
    `with` block runs; a subclass reads `self.psutil.process_iter()` there."""

    def __init__(self, interval_s: float):
        import psutil

        self.psutil, self.interval_s = psutil, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
