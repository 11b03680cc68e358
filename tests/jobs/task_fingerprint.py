"""The fingerprint of one fixed Task (a functools.partial model, a TextCorpus, a lambda lr)
as a fresh process computes it (tests/test_results.py: the same in every process, and free
of memory addresses).

Usage: python task_fingerprint.py CACHE_DIR   (the corpus' cache folder)
Prints: sweep_folder.task_fingerprint(task) as one line of JSON.
"""

import functools
import json
import sys

from flops_fit.data import TextCorpus
from flops_fit.models import GPT, lm_loss
from flops_fit.sweep_folder import task_fingerprint
from flops_fit.task import Task


def main() -> None:
    task = Task(functools.partial(GPT.from_size, aspect=8), TextCorpus(seq_len=32, cache_dir=sys.argv[1]),
                lm_loss, tokens_per_sample=32, lr=lambda n: 0.01 * n ** -0.1)
    print(json.dumps(task_fingerprint(task)))


if __name__ == "__main__":
    main()
