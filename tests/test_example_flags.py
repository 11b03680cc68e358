"""The examples' run flags reach run_sweep (no Ray: run_sweep is replaced by a recorder)."""

import sys

import pytest

import flops_fit as ff
from toy import EXAMPLES, load_example



@pytest.mark.parametrize("value", ["-1", "5"])
def test_max_failures_reaches_run_sweep(monkeypatch, value):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sweep = load_example("sweep")
    seen = {}
    monkeypatch.setattr(ff, "run_sweep", lambda plan, task, **kw: seen.update(kw))
    args = sweep.parse_args(["--smoke", "--dry-run", "--max-failures", value])
    sweep.plan_and_run(sweep.make_task(args), args)
    assert seen["max_failures"] == int(value)
    images = load_example("images")
    assert images.parse_args(["--max-failures", value]).max_failures == int(value)


def test_max_failures_defaults_to_a_few_retries():
    sys.path.insert(0, str(EXAMPLES))
    try:
        assert load_example("sweep").parse_args([]).max_failures == 2
    finally:
        sys.path.remove(str(EXAMPLES))
