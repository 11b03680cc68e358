"""`flops-fit fit` over every published data set, and its bad-input behaviour."""

import math
import re
import subprocess
import sys

import pytest

from flops_fit import cli

MARIN_MAP = ["--map", "params=parameter_count", "--map", "tokens=throughput/total_tokens",
             "--map", "flops=`throughput/total_gflops` * 1e9",  # gflops*1e9 is about 6ND
             "--map", "loss=eval/paloma/macro_loss",
             # follow-up runs at the predicted optimum are not sweep points
             "--where", '~Name.str.contains("validation-optimal")']
MISFIT_MAP = ["--map", "params=N", "--map", "tokens=D", "--map", "flops=C",
              # not an IsoFLOP design: group runs whose FLOPs agree within 30%
              "--budget-rtol", "0.3"]
DATASETS = {
    "epoch_chinchilla_fig4_svg_extracted.csv":
        ["--map", "params=Model Size", "--map", "flops=Training FLOP", "--drop-highest-loss", "5"],
    "chinchilla_fig4_right_isoflop_slices_eythore.csv":
        ["--map", "params=n_params", "--map", "tokens=n_tokens", "--map", "budget=flops_label"],
    "cs336_isoflops_curves.json":
        ["--map", "params=parameters", "--map", "flops=compute_budget",
         "--map", "budget=compute_budget", "--map", "loss=final_loss"],
    "porian2024_isoflop_points.csv":
        ["--map", "params=n", "--map", "tokens=t", "--map", "budget=flops",
         "--where", 'dataset == "rw" and hparams == "tuned" and warmup == "short" '
                    'and param_count == "standard"'],
    "llama3_fig2_isoflops_points_czech.csv":
        ["--map", "flops=compute_budget", "--map", "budget=compute_budget",
         "--map", "tokens=training_tokens", "--map", "loss=validation_loss"],
    "marin_isoflop_comma_wandb_export.csv": MARIN_MAP,
    "marin_isoflop_dclm_wandb_export.csv": MARIN_MAP,
    "marin_isoflop_nemotron_wandb_export.csv": MARIN_MAP,
    "misfitting_scaling_results_last_ckpt.csv": MISFIT_MAP,
    "misfitting_scaling_results_all_ckpts.csv":
        MISFIT_MAP + ["--where", "portion_steps_elapsed == 1"],  # finished runs only
}
BOOTSTRAP = "30"
NUMBER = r"(-?[0-9.]+(?:e[+-]?\d+)?)"
EXPONENT_LINE = re.compile(rf"\b(a|b|alpha|beta) = {NUMBER} \[{NUMBER}, {NUMBER}\]")


def _exponents(text):
    found = {}
    for name, v, lo, hi in EXPONENT_LINE.findall(text):
        found.setdefault(name, []).append((float(v), float(lo), float(hi)))
    return found


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_published_data_set_fits(name, data_dir, capsys):
    path = data_dir / name
    assert cli.main(["fit", str(path), "--bootstrap", BOOTSTRAP, *DATASETS[name]]) == 0
    out = capsys.readouterr().out
    ex = _exponents(out)
    assert len(ex["a"]) == 2 and len(ex["b"]) == 2  # isoflop and parametric
    for values in ex.values():
        for v, lo, hi in values:
            assert all(math.isfinite(x) for x in (v, lo, hi)) and lo <= hi
    assert "Excluded" in out
    assert "| isoflop |" in out and "| parametric |" in out


PORIAN_OPTIMA = ["--map", "params=n_star", "--map", "tokens=t_star", "--map", "loss=loss_star",
                 "--map", "budget=flops", "--where", 'dataset == "rw" and hparams == "tuned" '
                 'and warmup == "short" and param_count == "standard"']


def test_porian_optima_table_fits_with_optimum_given(data_dir, capsys):
    # One row per budget, already the optimum: power laws are fitted to the rows themselves.
    path = str(data_dir / "porian2024_isoflop_optima.csv")
    assert cli.main(["fit", path, "--bootstrap", "200", "--optimum", "given", *PORIAN_OPTIMA]) == 0
    out = capsys.readouterr().out
    (a,) = _exponents(out)["a"]
    # Porian et al. 2024 (arXiv:2406.19146) report a ~ 0.5 for this configuration
    assert 0.45 < a[0] < 0.55 and a[1] < a[0] < a[2]
    assert "parametric: not run (optimum=given" in out
    # the same table as sweep points is refused: one size per budget gives no parabola
    assert cli.main(["fit", path, "--bootstrap", "0", "--approach", "isoflop", *PORIAN_OPTIMA]) == 2
    assert "budget" in capsys.readouterr().err


def test_subprocess_predict_and_plots(data_dir, tmp_path):
    name = "chinchilla_fig4_right_isoflop_slices_eythore.csv"
    cmd = [sys.executable, "-m", "flops_fit.cli", "fit", str(data_dir / name), "--bootstrap", "20",
           "--predict", "1e21", "1e23", "--plots", str(tmp_path / "plots"), *DATASETS[name]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [l for l in res.stdout.splitlines() if l.startswith("| isoflop |")]
    assert [r.split("|")[2].strip() for r in rows] == ["1.00e+21", "1.00e+23"]
    assert len(list((tmp_path / "plots").glob("*.png"))) == 3


def test_subprocess_bad_input_exits_2_with_one_line(data_dir):
    res = subprocess.run([sys.executable, "-m", "flops_fit.cli", "fit",
                          str(data_dir / "llama3_fig2_isoflops_points_czech.csv")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "missing column" in res.stderr and "--map" in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["--map", "params"], "--map"),
    (["--map", "params=no_such_col"], "columns['params']"),
    (["--where", "loss <"], "where"),
    (["--drop-highest-loss", "-1"], "--drop-highest-loss -1 must be an int >= 0"),
])
def test_bad_arguments_exit_2_naming_them(data_dir, capsys, args, needle):
    path = data_dir / "chinchilla_fig4_right_isoflop_slices_eythore.csv"
    base = DATASETS["chinchilla_fig4_right_isoflop_slices_eythore.csv"]
    assert cli.main(["fit", str(path), "--bootstrap", "0", *base, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_missing_file_exit_2(capsys, tmp_path):
    assert cli.main(["fit", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
