"""An example copied alone into a folder and imported from there (tests/test_example_flags.py):
it parses its flags and builds its Task with no other example beside it.

Usage: python copied_example.py FOLDER MODULE   (MODULE: the copy's file name without .py)
Prints: the run name, max_failures, the budgets and the Task's batch size, space-separated.
"""

import importlib
import sys


def main() -> None:
    folder, module = sys.argv[1:3]
    sys.path[0] = folder  # the copy's folder in place of this script's: nothing of the repository beside it
    example = importlib.import_module(module)
    args = example.parse_args(["--smoke", "--max-failures", "3"])
    task = example.make_task(args)
    print(args.name, args.max_failures, args.budgets, task.batch_size)


if __name__ == "__main__":
    main()
