"""Where a finished sweep's report lands: the sweep folder, also when that folder is a URI
(cloud storage), never the working directory (under `ray job submit`, a temporary copy)."""

import types

from flops_fit import results
from flops_fit import storage
from conftest import synthetic_sweep
from driver_side import load_example


def test_report_of_a_sweep_in_storage_given_as_uri_goes_to_the_sweep_folder(tmp_path, monkeypatch, capsys):
    sweep = load_example("sweep")
    cwd = tmp_path / "job-working-dir"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    table = synthetic_sweep()
    folder = tmp_path / "bucket" / "runs" / "my-sweep"
    swept = results.SweepResults(table=table, path=f"file://{folder}")
    args = types.SimpleNamespace(bootstrap=20, budgets=sorted(table.budget.unique()), name="my-sweep")
    assert sweep.report(swept, args) is not None
    out = capsys.readouterr().out
    for name in ("summary.txt", "table.md", "prediction.csv", "isoflop_curves.png", "optima_vs_compute.png"):
        assert (folder / "report" / name).stat().st_size > 0, name
        assert f"file://{folder}/report/{name}" in out  # the printed path is where it is
    assert list(cwd.iterdir()) == []


def test_text_written_to_a_uri_creates_its_folders(tmp_path):
    path = f"file://{tmp_path}/runs/sweep/finished/C1e+10-s1.json"
    storage.write_text(path, '{"loss": 2.5}')
    assert (tmp_path / "runs/sweep/finished/C1e+10-s1.json").read_text() == '{"loss": 2.5}'


def test_report_of_a_sweep_in_object_storage_goes_to_the_bucket(tmp_path, monkeypatch, capsys, s3_server):
    sweep = load_example("sweep")
    monkeypatch.chdir(tmp_path)
    table = synthetic_sweep()
    uri = s3_server.bucket("reports") + "/runs/my-sweep"
    swept = results.SweepResults(table=table, path=uri)
    args = types.SimpleNamespace(bootstrap=20, budgets=sorted(table.budget.unique()), name="my-sweep")
    assert sweep.report(swept, args) is not None
    out = capsys.readouterr().out
    keys = set(s3_server.keys("reports", "runs/my-sweep/report/"))
    for name in ("summary.txt", "table.md", "prediction.csv", "isoflop_curves.png", "optima_vs_compute.png"):
        assert f"runs/my-sweep/report/{name}" in keys, name
        assert f"{uri}/report/{name}" in out
    summary = s3_server.client().get_object(Bucket="reports", Key="runs/my-sweep/report/summary.txt")["Body"].read()
    assert summary.startswith(b"Scaling-law fit") and b"budgets in the power laws: 7 of 7" in summary
    assert list(tmp_path.iterdir()) == []


def test_one_writer_writes_a_fits_files_to_a_folder_or_a_uri(tmp_path):
    from flops_fit import fit
    from flops_fit.report import write_report

    laws = fit(synthetic_sweep(), bootstrap=0)
    plots = write_report(str(tmp_path / "plots"), laws, texts=False)  # flops-fit fit --plots
    assert sorted(p.rsplit("/", 1)[1] for p in plots) == sorted(f.name for f in (tmp_path / "plots").iterdir())
    assert all(p.endswith(".png") for p in plots) and len(plots) >= 2
    texts = write_report(f"file://{tmp_path}/live", laws, plots=False)  # a live fit's table and summary
    assert texts == [f"file://{tmp_path}/live/summary.txt", f"file://{tmp_path}/live/table.md"]
    assert (tmp_path / "live" / "table.md").read_text() == laws.to_markdown() + "\n"
    assert (tmp_path / "live" / "summary.txt").read_text() == laws.summary() + "\n"
