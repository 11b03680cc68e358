"""The examples' run flags reach run_sweep (no Ray: run_sweep is replaced by a recorder),
and each example runs on its own when copied (the shared flags live in the package)."""

import shutil
import subprocess
import sys

import pytest

import flops_fit as ff
from driver_side import EXAMPLES, JOBS, load_example


@pytest.mark.parametrize("value", ["-1", "5"])
def test_max_failures_reaches_run_sweep(monkeypatch, value):
    sweep = load_example("sweep")
    seen = {}
    monkeypatch.setattr(ff, "run_sweep", lambda task, plan, **kw: seen.update(kw))
    args = sweep.parse_args(["--smoke", "--dry-run", "--max-failures", value])
    sweep.plan_and_run(sweep.make_task(args), args)
    assert seen["max_failures"] == int(value)
    images = load_example("images")
    assert images.parse_args(["--max-failures", value]).max_failures == int(value)


def test_max_failures_defaults_to_a_few_retries():
    assert load_example("sweep").parse_args([]).max_failures == 2


@pytest.mark.parametrize("example", ["sweep", "images"])
def test_each_example_runs_on_its_own_when_copied(tmp_path, example):
    # a copy alone in a folder (no other example beside it) parses its flags and builds its Task
    copy = tmp_path / f"my_{example}.py"
    shutil.copy(EXAMPLES / f"{example}.py", copy)
    out = subprocess.run([sys.executable, str(JOBS / "copied_example.py"), str(tmp_path), f"my_{example}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    name, failures = out.stdout.split()[:2]
    assert (name, failures) == ({"sweep": "smoke", "images": "vit-smoke"}[example], "3")


def test_adaptive_asks_run_sweep_for_the_bracket_search_under_its_own_name(monkeypatch):
    sweep = load_example("sweep")
    seen = {}
    monkeypatch.setattr(ff, "run_sweep", lambda task, plan, **kw: seen.update(kw))
    args = sweep.parse_args(["--smoke", "--dry-run", "--adaptive", "--max-points", "12"])
    sweep.plan_and_run(sweep.make_task(args), args)
    assert (seen["search"], seen["name"]) == (ff.BracketSearchOptions(max_points=12), "smoke-adaptive")
    static = sweep.parse_args(["--smoke", "--dry-run"])
    sweep.plan_and_run(sweep.make_task(static), static)
    assert (seen["search"], seen["name"]) == (None, "smoke")
    assert "max_points" not in seen


def test_max_points_without_adaptive_is_refused(capsys):
    with pytest.raises(SystemExit):
        load_example("sweep").parse_args(["--max-points", "12"])
    assert "--max-points bounds a search: add --adaptive" in capsys.readouterr().err


def test_lr_search_reaches_run_sweep_and_names_the_sweep_apart(monkeypatch):
    sweep = load_example("sweep")
    seen = {}
    monkeypatch.setattr(ff, "run_sweep", lambda task, plan, **kw: seen.update(kw))
    args = sweep.parse_args(["--smoke", "--lr-search", "0.3", "1", "3"])
    sweep.plan_and_run(sweep.make_task(args), args)
    assert seen["lr_search"] == [0.3, 1.0, 3.0]
    assert args.name == "smoke-lr"  # never resumes the unsearched smoke sweep
    assert sweep.parse_args(["--smoke"]).lr_search is None


def test_data_in_object_storage_picks_its_source_as_a_local_path_does(s3_server, tmp_path):
    from flops_fit.data import HFText, TextCorpus, TokenFile, write_token_file

    sweep = load_example("sweep")
    bucket = s3_server.bucket("example-data")
    client = s3_server.client()
    write_token_file(tmp_path / "train.bin", list(range(256)) * 4)
    client.upload_file(str(tmp_path / "train.bin"), "example-data", "tokens/train.bin")
    client.put_object(Bucket="example-data", Key="text/a.txt", Body=b"some text " * 40)
    assert type(sweep.make_data([f"{bucket}/tokens"], 32)) is TokenFile
    assert type(sweep.make_data([f"{bucket}/tokens/train.bin"], 32)) is TokenFile
    assert type(sweep.make_data([f"{bucket}/text"], 32)) is TextCorpus
    assert HFText not in {type(sweep.make_data([f"{bucket}/{p}"], 32)) for p in ("tokens", "text")}
