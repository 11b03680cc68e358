"""The dry run's loss of one fixed point, under the default law (Chinchilla's) and task seed 0
(tests/test_task.py runs it under several PYTHONHASHSEED values: the noise must not depend
on str hashes, which are salted per process).

Usage: python dry_run_loss.py
Prints: repr() of the loss (nats/token).
"""

from flops_fit.dry_run import dry_run_loss
from flops_fit.plan import SweepPoint

POINT = SweepPoint(point_id="C1e+12-s3", budget=1e12, size=3, params=100000, flops_per_token=6e5, steps=50,
                   tokens=1600000, flops=9.6e11)


def main() -> None:
    print(repr(dry_run_loss(POINT, True, 0)))


if __name__ == "__main__":
    main()
