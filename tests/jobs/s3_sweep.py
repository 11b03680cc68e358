"""A sweep driver whose data and storage_path are in a bucket (tests/test_object_storage.py
kills one mid-sweep and runs a second to resume it): two points of the reference GPT, one
at a time, on the Ray at ADDRESS, the tokens read from BUCKET/data (nanoGPT's layout),
the sweep written to BUCKET/runs/on-s3.

Usage: python s3_sweep.py TMP ADDRESS BUCKET HEARTBEAT_S
    TMP: a local folder for the token cache; BUCKET: s3://name of the local S3 server (the
    AWS_* variables in the environment); HEARTBEAT_S: how often the driver's lease beats
    (seconds; flops_fit.lease.HEARTBEAT_S).
Prints: nothing of its own; exits 0 when the sweep finished.
"""

import sys
from pathlib import Path

import flops_fit as ff
from flops_fit import lease
from flops_fit.data import TokenFile
from flops_fit.models import gpt, lm_loss


def main() -> None:
    tmp, address, bucket, beat = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    lease.HEARTBEAT_S = beat
    data = TokenFile(bucket + "/data", seq_len=32, vocab_size=256, cache_dir=tmp / "cache")
    task = ff.Task(model_fn=gpt, data=data, loss_fn=lm_loss, tokens_per_sample=32, batch_size=8,
                   eval_samples=64)
    plan = ff.plan_sweep(task, [5e9], sizes=[1, 2])
    ff.run_sweep(task, plan, name="on-s3", storage_path=bucket + "/runs", max_concurrent=1,
                 address=address, live_fit=False)


if __name__ == "__main__":
    main()
