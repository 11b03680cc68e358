"""A user's driver joining a running cluster through ray_setup.ensure_ray, with one Ray Train
setting of the user's own (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=5) (tests/test_reliability.py:
the laptop settings are not forced on a cluster that is joined).

Usage: python join_cluster.py ADDRESS   (the cluster's GCS address)
Prints: one line "RESULT {json}": whether ensure_ray started a Ray ("started"), the job's
runtime_env variables ("job_env"), and the driver's own value of each of
ray_setup.LOCAL_RAY_ENV's variables, or null ("driver").
"""

import json
import os
import sys

# Set before flops_fit and Ray are imported, as a user's shell would have them.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "5"  # the user's own setting

import ray

from flops_fit import ray_setup


def main() -> None:
    started = ray_setup.ensure_ray(sys.argv[1], verbose=False)
    job_env = ray.get_runtime_context().runtime_env.get("env_vars", {})
    print("RESULT", json.dumps({"started": started, "job_env": job_env,
                                "driver": {k: os.environ.get(k) for k in ray_setup.LOCAL_RAY_ENV}}))
    ray.shutdown()


if __name__ == "__main__":
    main()
