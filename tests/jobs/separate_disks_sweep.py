"""The sweep driver of tests/test_separate_disks.py: joins the cluster as run_sweep would,
waits for both of its nodes, and runs a sweep of one tiny point (2e9 FLOPs, size 1 of the
reference GPT) on a TokenFile; with "probe", it then asks the worker node (the node with
CPUs) what it sees of a path and of its cache folder (a task pinned to that node).

Usage: python separate_disks_sweep.py ARGS
    ARGS: JSON with "address" (the GCS address), "data" (the token files' folder or URI),
    "cache" (the TokenFile cache folder), "storage" and "name" (run_sweep's), and
    optionally "probe" (a path).
Prints: "TABLE [json]" (point_id, status, error of each row), or "REFUSED {json}" (seconds
until run_sweep raised, the error's type and message); with "probe", then "SEES [json]":
whether the path exists on the worker node, and the names in its CACHE/remote folder.
"""

import json
import os
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import flops_fit as ff
from flops_fit import ray_setup
from flops_fit.data import TokenFile
from flops_fit.models import gpt, lm_loss


@ray.remote(num_cpus=1)
def sees(path, cache):
    return os.path.exists(path), sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def main() -> None:
    args = json.loads(sys.argv[1])
    ray_setup.ensure_ray(args["address"], verbose=False)
    deadline = time.time() + 60
    while sum(1 for n in ray.nodes() if n["Alive"]) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2, "the worker node did not join"
    data = TokenFile(args["data"], seq_len=32, vocab_size=256, cache_dir=args["cache"])
    task = ff.Task(model_fn=gpt, data=data, loss_fn=lm_loss, tokens_per_sample=32, batch_size=8, eval_samples=64)
    plan = ff.plan_sweep(task, [2e9], sizes=[1])
    start = time.monotonic()
    try:
        res = ff.run_sweep(task, plan, name=args["name"], storage_path=args["storage"], live_fit=False)
    except Exception as e:
        print("REFUSED", json.dumps(dict(seconds=time.monotonic() - start, type=type(e).__name__, error=str(e))))
    else:
        print("TABLE", json.dumps(res.table[["point_id", "status", "error"]].astype(str).to_dict("records")))

    if args.get("probe"):
        node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
        pinned = sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        print("SEES", json.dumps(ray.get(pinned.remote(args["probe"], args["cache"] + "/remote"))))


if __name__ == "__main__":
    main()
