"""What benchmarks/overhead.py writes into benchmarks/RESULTS.md: one table in the file's form
(a column per arm, each repeat paired with the floor's), the section's own introduction kept
and the sections around it untouched. No Ray: the runs are written out by hand."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PLAN = [SimpleNamespace(point_id="C1e+10-s2", steps=100), SimpleNamespace(point_id="C1e+10-s3", steps=50)]


def ray_run(wall: float, worker_cpu: float) -> dict:
    return dict(wall=wall, to_first=[10.0, 12.0], from_last=[1.0, 3.0],
                cpu={"ray::RayTrainWorker": worker_cpu, "ray::TrainController": 4.0, "raylet": 1.0})


RUNS = {"plain": [dict(wall=10.0), dict(wall=12.0), dict(wall=11.0)],
        "floor": [ray_run(40.0, 8.0), ray_run(50.0, 8.0), ray_run(44.0, 8.0)],
        "flops_fit": [ray_run(44.0, 10.0), ray_run(45.0, 10.0), ray_run(66.0, 10.0)]}


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead", BENCHMARKS / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_of(table: list) -> dict:
    """Row name -> its cells, of a Markdown table's body."""
    body = [line for line in table if line.startswith("| ") and not line.startswith("| |")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in body)}


def test_the_table_has_an_arm_per_column_and_pairs_each_repeat_with_the_floors(overhead):
    table = overhead.markdown_table(["plain", "floor", "flops_fit"], RUNS, PLAN)
    assert table[0] == "| | plain | floor | flops_fit |"
    rows = rows_of(table)
    assert rows["wall, median (range)"] == ["11.0 s (10.0-12.0)", "44.0 s (40.0-50.0)", "45.0 s (44.0-66.0)"]
    # flops_fit over the floor of the same repeat: 44/40, 45/50, 66/44 (median 1.10); over the
    # plain median: 45/11
    assert rows["/ plain, / floor"] == ["1.00", "4.00, 1.00", "4.09, 1.10"]
    # per point: (44-40)/2, (45-50)/2, (66-44)/2 -> median +2.0 s
    assert rows["per point vs floor"] == ["", "+0.0 s", "+2.0 s (ratio 0.90-1.50)"]
    assert rows["trial start -> first step, median over points and repeats"][1:] == ["11.0 s (max 12.0)"] * 2
    # CPU per point: (8 + 4 + 1) / 2 and (10 + 4 + 1) / 2; the controller alone is Ray Train's
    assert rows["CPU seconds per point, all processes (median over repeats)"][1:] == ["6.50", "7.50"]
    assert rows["of which Ray Train's per-point processes and the trial driver"][1:] == ["2.00", "2.00"]
    assert rows["of which `ray::RayTrainWorker`"][1:] == ["4.00", "5.00"]
    assert "- flops_fit: 1.10, 0.90, 1.50 (median 1.10)" in table


def test_without_a_plain_arm_the_ratio_row_is_to_the_floor_alone(overhead):
    runs = {"floor": RUNS["floor"], "flops_fit[chdir]": RUNS["flops_fit"]}
    rows = rows_of(overhead.markdown_table(list(runs), runs, PLAN))
    assert rows["/ floor"] == ["1.00", "1.10"]
    assert "/ plain, / floor" not in rows


def test_a_rerun_replaces_its_sections_figures_and_keeps_its_introduction(overhead, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Overhead\n\nWhat it measures.\n\nCommand: `old`  \n"
                       "| old | figures |\n\n## Next\n\nNext section's text.\n")
    table = overhead.markdown_table(["plain", "floor", "flops_fit"], RUNS, PLAN)
    overhead.write_section("Overhead", "python benchmarks/overhead.py", table, [0.5, 3.0], PLAN, results=results)
    text = results.read_text()
    assert "What it measures.\n\nCommand: `python benchmarks/overhead.py`" in text
    assert "| old | figures |" not in text and "`old`" not in text
    assert "| | plain | floor | flops_fit |" in text
    assert "load average 0.5-3.0" in text and "C1e+10-s2: 100 steps" in text
    assert text.endswith("## Next\n\nNext section's text.\n")
    assert text.count("## Overhead") == 1


def test_a_new_title_is_appended_as_its_own_section(overhead, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Other\n\nIts text.\n")
    table = overhead.markdown_table(["floor", "flops_fit"], {k: RUNS[k] for k in ("floor", "flops_fit")}, PLAN)
    overhead.write_section("Overhead: Ray settings", "python benchmarks/overhead.py --settings chdir", table,
                           [1.0, 2.0], PLAN, results=results)
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\n\nIts text.\n\n## Overhead: Ray settings\n")
    assert "| | floor | flops_fit |" in text


def test_the_printout_is_the_table_then_each_process_per_point(overhead):
    table = overhead.markdown_table(["plain", "floor", "flops_fit"], RUNS, PLAN)
    printed = overhead.summarise(["plain", "floor", "flops_fit"], RUNS, PLAN, [0.5, 3.0], table)
    start = printed.index(table[0])
    assert printed[start:start + len(table)] == table
    by_process = {line.split()[0]: line.split()[1:] for line in printed[start + len(table):] if line.startswith("  ray")}
    assert by_process["ray::RayTrainWorker"] == ["4.00", "5.00"]  # 8/2 and 10/2
    assert by_process["ray::TrainController"] == ["2.00", "2.00"]
