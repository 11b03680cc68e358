"""A sweep driver that claims a sweep folder and then only waits, to be killed
(tests/test_results.py: a killed driver leaves no lock behind). Its task is the one of
test_results.py's `task` fixture, so that the claim is of the same task; its plan is the
folder's plan.json.

Usage: python hold_sweep_claim.py FOLDER
Prints: "HELD" once the claim is held; then holds it for 600 s.
"""

import sys
import time
from pathlib import Path

from flops_fit.plan import SweepPlan
from flops_fit.sweep_folder import SweepFolder
from flops_fit.task import Task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: test_results
from test_results import no_data, no_loss, no_model


def main() -> None:
    folder = sys.argv[1]
    task = Task(no_model, no_data, no_loss, tokens_per_sample=128, batch_size=4, lr=2e-3, extra={"note": "x"})
    claim = SweepFolder(folder).claim(SweepPlan.from_json(folder + "/plan.json"), task)
    print("HELD", flush=True)
    time.sleep(600)
    claim.release()


if __name__ == "__main__":
    main()
