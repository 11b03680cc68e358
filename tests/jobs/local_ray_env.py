"""What flops_fit hands a Ray it starts itself: ray_setup.set_ray_env(local=True) in a fresh
process that has only the environment it was started with (tests/test_reliability.py).

Usage: python local_ray_env.py
Prints: one line of JSON: "handed", the variables set_ray_env returns for Ray's processes,
and "auth", this process's RAY_AUTH_MODE afterwards (null when unset).
"""

import json
import os

from flops_fit import ray_setup


def main() -> None:
    handed = ray_setup.set_ray_env(local=True)
    print(json.dumps({"handed": handed, "auth": os.environ.get("RAY_AUTH_MODE")}))


if __name__ == "__main__":
    main()
