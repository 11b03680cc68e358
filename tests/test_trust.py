"""Fits you can trust on anyone's data: no code execution, no silent nonsense, one-line
errors, any design, a backtest. Each case of issue 14's list, with its message pinned."""

import json

import numpy as np
import pandas as pd
import pytest

from flops_fit import FitError, cli, fit
from flops_fit.expressions import ExpressionError, evaluate
from tests.conftest import synthetic_sweep

EPOCH = ["--map", "params=Model Size", "--map", "flops=Training FLOP"]


# --- 1. safe expressions: nothing runs -------------------------------------------------

def _attacks(marker):
    m = str(marker)
    return [
        (f"__import__('os').system('touch {m}')", "calling the method '.system' is not allowed"),
        ("__import__('os')", "calling '__import__' is not allowed"),
        (f"@Path('{m}').touch()", "an '@' reference to a Python variable is not allowed"),
        (f"loss.__class__.__init__.__globals__['os'].system('touch {m}')", "calling the method '.system'"),
        ("loss.__class__", "the attribute access '.__class__'"),
        (f"open('{m}', 'w').write('x')", "calling the method '.write' is not allowed"),
        (f"open('{m}', 'w')", "calling 'open' is not allowed"),
        (f"(lambda: open('{m}', 'w'))()", "calling anything but the listed functions and methods"),
        ("lambda: 1", "lambda is not allowed"),
        ("loss.iloc[0]", "a subscript ([...]) is not allowed"),
        ("loss.pipe(print)", "calling the method '.pipe' is not allowed"),
        ("Name.str.__class__", "the attribute access '.__class__'"),
        ("[x for x in loss]", "the construct ListComp is not allowed"),
        ("log(loss, base=2)", "a keyword argument is not allowed"),
    ]


def test_code_execution_attempts_are_refused_and_run_nothing(sweep, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    for expression, message in _attacks(marker):
        for flag in ("--where", "--map"):
            value = expression if flag == "--where" else f"loss={expression}"
            path = tmp_path / "s.csv"
            sweep.to_csv(path, index=False)
            assert cli.main(["fit", str(path), "--bootstrap", "0", flag, value]) == 2, expression
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, (expression, err)
        with pytest.raises(FitError, match="not allowed|syntax error"):
            fit(sweep, where=expression, bootstrap=0)
    assert not marker.exists()


def test_allowed_functions_and_methods_evaluate():
    frame = pd.DataFrame({"x": [1.0, 10.0, 100.0], "Name": ["a-run", "b-run", "validation-optimal"],
                          "Model Size": [1, 2, 3]})
    assert evaluate("log10(x) * 2", frame).tolist() == [0.0, 2.0, 4.0]
    assert evaluate("`Model Size` * 1e9", frame).tolist() == [1e9, 2e9, 3e9]
    assert evaluate('~Name.str.contains("validation-optimal")', frame).tolist() == [True, True, False]
    assert evaluate('Name.str.startswith("a") or x > 50', frame).tolist() == [True, False, True]
    assert evaluate("x.isin([1, 100]) and not x == 1", frame).tolist() == [False, False, True]
    assert evaluate("1 < x <= 10", frame).tolist() == [False, True, False]
    assert evaluate('Name.str.contains(".")', frame).tolist() == [False, False, False]  # no regex
    with pytest.raises(ExpressionError, match="unknown column 'y'"):
        evaluate("y > 1", frame)


# --- 4. refuse or warn, never silent ---------------------------------------------------

def _finite_real_table(laws):
    frame = laws.to_frame()
    assert all(isinstance(v, float) for v in frame["value"])
    assert np.isfinite(frame["value"]).all()
    assert "j" not in laws.to_markdown()  # no complex number reaches a table


def test_loss_rising_with_compute_warns_and_stays_real(sweep):
    data = sweep.copy()
    data["loss"] = 2.0 + 0.1 * np.log(data["params"] * data["tokens"] / 1e18)
    laws = fit(data, bootstrap=0)
    assert any(w.startswith("loss does not fall with compute") for w in laws.warnings)
    assert laws.summary().startswith("WARNING: loss does not fall with compute")
    p = laws.parametric
    assert p.alpha.value > 0 and p.beta.value > 0 and 0 < p.E.value <= data["loss"].min()
    _finite_real_table(laws)


def test_random_loss_gives_no_complex_numbers(sweep):
    data = sweep.copy()
    data["loss"] = np.random.default_rng(0).uniform(2, 4, len(data))
    laws = fit(data, bootstrap=50, approach="parametric")
    p = laws.parametric
    assert p.alpha.value > 0 and p.beta.value > 0 and p.E.value <= data["loss"].min()
    (w,) = [w for w in laws.warnings if w.startswith("the parametric law explains only")]
    assert "of the variance of ln loss" in w
    _finite_real_table(laws)


@pytest.mark.parametrize("scale_flops,scale_params", [(1e-9, 1.0), (1.0, 1e-6)])
def test_unit_slip_in_flops_or_params_warns(sweep, scale_flops, scale_params):
    data = sweep.copy()
    data["flops"] = 6 * data["params"] * data["tokens"] * scale_flops  # GFLOPs
    data["params"] *= scale_params  # millions of parameters
    laws = fit(data, bootstrap=0, approach="isoflop")
    (w,) = [w for w in laws.warnings if "far from 6 FLOPs per parameter per token" in w]
    assert "a unit slip" in w


def test_params_in_millions_without_flops_column_warns(sweep):
    data = sweep.assign(params=sweep["params"] / 1e6)
    laws = fit(data, bootstrap=0, approach="isoflop")
    (w,) = [w for w in laws.warnings if w.startswith("tokens per parameter range from")]
    assert "a unit slip (parameters in millions, tokens in billions)?" in w


def test_budget_column_in_pf_days_warns(sweep):
    data = sweep.copy()
    data["budget"] = data["budget"] / 8.64e19  # PF-days
    laws = fit(data, bootstrap=0, approach="isoflop")
    assert any(w.startswith(f"budget column disagrees with the FLOPs in {len(data)} of {len(data)} rows")
               for w in laws.warnings)


def test_duplicated_rows_collapse_and_do_not_shrink_intervals(sweep):
    once = fit(sweep, bootstrap=100, seed=0)
    ten = fit(pd.concat([sweep] * 10, ignore_index=True), bootstrap=100, seed=0)
    assert f"{9 * len(sweep)} exact duplicate row(s) collapsed into one each" in ten.notes
    for name in ("alpha", "beta", "E"):
        a, b = getattr(once.parametric, name), getattr(ten.parametric, name)
        assert b.high - b.low == pytest.approx(a.high - a.low, rel=1e-9)
    assert ten.isoflop.a.high - ten.isoflop.a.low == pytest.approx(once.isoflop.a.high - once.isoflop.a.low)


def test_bootstrap_resamples_runs_not_rows(true_law):
    # Each run reported at three checkpoints that share the run's noise: resampled as
    # rows, the checkpoints pass for independent points and the interval is too narrow.
    rng = np.random.default_rng(0)
    E, A, B, alpha, beta = (true_law[k] for k in ("E", "A", "B", "alpha", "beta"))
    rows = []
    for run, (n, d) in enumerate(zip(np.geomspace(1e7, 1e9, 25), np.geomspace(1e9, 1e11, 25)[::-1])):
        for n_, d_ in ((n, d), (n * 2.1, d / 1.7), (n / 1.9, d * 2.3)):
            noise = rng.normal(0, 0.03)
            for f in (0.5, 0.75, 1.0):
                rows.append(dict(run=f"r{run}-{n_:.0f}", params=n_, tokens=d_ * f,
                                 loss=(E + A / n_**alpha + B / (d_ * f) ** beta) * np.exp(noise)))
    data = pd.DataFrame(rows)
    by_row = fit(data.drop(columns="run"), bootstrap=200, seed=0, approach="parametric")
    by_run = fit(data, bootstrap=200, seed=0, approach="parametric")
    # N varies only between runs: the N_opt exponent is what row resampling overstates
    width = lambda laws: laws.parametric.a.high - laws.parametric.a.low  # noqa: E731
    assert width(by_run) > 1.5 * width(by_row)


def test_float_noise_in_budget_column_never_splits_a_budget(sweep):
    data = sweep.copy()
    data["budget"] = [np.nextafter(b, np.inf) if i % 2 else b for i, b in enumerate(data["budget"])]
    clean = fit(sweep, bootstrap=0, approach="isoflop")
    noisy = fit(data, bootstrap=0, approach="isoflop")
    assert len(noisy.isoflop.optima) == len(clean.isoflop.optima) == sweep["budget"].nunique()
    assert noisy.isoflop.a.value == pytest.approx(clean.isoflop.a.value, rel=1e-12)


def test_wide_flop_groups_warn(sweep):
    data = sweep.drop(columns="budget")
    data["flops"] = 6 * data["params"] * data["tokens"] * np.tile([0.92, 1.0, 1.09], 21)
    laws = fit(data, bootstrap=0, budget_rtol=0.3, approach="isoflop")
    (w,) = [w for w in laws.warnings if "formed with budget_rtol=0.3 span up to" in w]
    assert "18%" in w


def test_three_budgets_give_wide_honest_isoflop_intervals_and_no_floor_interval(sweep):
    # 3 budgets leave the line 1 degree of freedom (t quantile 12.7 at 95 %) and the floor
    # law L_opt = E + k C^-c none: its loss interval is absent and the summary says why.
    keep = sweep[sweep["budget"].isin([1e19, 1e20, 1e21])]
    keep = keep.groupby("budget", group_keys=False).apply(lambda g: g.iloc[3:6])
    laws = fit(keep, bootstrap=0, approach="isoflop")
    a = laws.isoflop.a
    assert a.low < a.value < a.high and a.high - a.low > 0.05
    assert any(w.startswith("isoflop loss law rests on 3 budgets") for w in laws.warnings)
    pred = laws.predict([1e22])
    assert np.isnan(pred["loss_low"].iloc[0]) and pred["loss"].iloc[0] > laws.isoflop.E.value


def test_approaches_disagreeing_beyond_intervals_warn(data_dir):
    # The (Mis)Fitting runs are not an IsoFLOP design: FLOP groups formed with a 30%
    # tolerance give IsoFLOP optima that the parametric law does not share.
    laws = fit(data_dir / "misfitting_scaling_results_last_ckpt.csv",
               columns={"params": "N", "tokens": "D", "flops": "C"}, budget_rtol=0.3, bootstrap=100)
    assert laws.agreement.verdict == "disagree"
    assert any(w.startswith("the two approaches DISAGREE") for w in laws.warnings)
    assert any("formed with budget_rtol=0.3 span up to" in w for w in laws.warnings)


# --- 6. one-line errors, exit 2 --------------------------------------------------------

def _one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unreadable_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert f"data: {empty} is empty" in _one_line_error(capsys, ["fit", str(empty)])
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"params,tokens,loss\n1,2,3\n1,2,\xff\n")
    assert f"data: {latin}, line 3: not UTF-8 text (byte 0xff)" in _one_line_error(capsys, ["fit", str(latin)])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"params": 1, "tokens": 2, "loss": 3},\n{"params": 1 "tokens": 2}]\n')
    assert f"data: {bad}, line 2: invalid JSON" in _one_line_error(capsys, ["fit", str(bad)])
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"params": 1}\n\n{"params": 2,}\n')
    assert f"data: {lines}, line 3: invalid JSON" in _one_line_error(capsys, ["fit", str(lines)])
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps([{"params": 1, "tokens": 2, "loss": {"val": 3.0}}]))
    assert "column 'loss' holds nested objects (record 1)" in _one_line_error(capsys, ["fit", str(nested)])
    folder = tmp_path / "nothing"
    folder.mkdir()
    assert "holds no sweep trials" in _one_line_error(capsys, ["fit", str(folder)])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "plan.json").write_text("{broken")
    assert "plan.json" in _one_line_error(capsys, ["fit", str(damaged)])


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "--seed -1 must be an int >= 0"),
    (["--where", "params.iloc[1000] > 0"], "where: 'params.iloc[1000] > 0': a subscript ([...]) is not allowed"),
    (["--bootstrap", "1000000000"], "--bootstrap 1000000000 must be an int from 0 to 100000"),
    (["--bootstrap", "many"], "argument --bootstrap: invalid int value: 'many'"),
    (["--approach", "both"], "argument --approach: invalid choice: 'both'"),
    (["--budget-rtol", "-1"], "--budget-rtol -1.0 must be a finite number > 0"),
    (["--holdout", "params > 1e30"], "holdout: 'params > 1e30' selects no usable row"),
])
def test_bad_flags_are_one_line_errors(data_dir, capsys, args, message):
    err = _one_line_error(capsys, ["fit", str(data_dir / "epoch_chinchilla_fig4_svg_extracted.csv"),
                                   *EPOCH, *args])
    assert message in err


def test_row_bound(monkeypatch, sweep, tmp_path):
    from flops_fit.fitting import inputs

    path = tmp_path / "s.csv"
    sweep.to_csv(path, index=False)
    monkeypatch.setattr(inputs, "MAX_ROWS", 10)
    with pytest.raises(FitError, match=rf"{len(sweep)} rows, more than the 10 this fit reads"):
        fit(path, bootstrap=0)


# --- 2. any design; 3. backtest --------------------------------------------------------

GADRE = ["--map", "loss=loss_c4_val", "--where", 'dataset == "c4_original"']


def test_over_training_design_fits_parametric_and_says_why_not_isoflop(data_dir, capsys):
    assert cli.main(["fit", str(data_dir / "gadre2024_overtraining_runs.csv"), "--bootstrap", "0", *GADRE]) == 0
    out = capsys.readouterr().out
    assert "approach isoflop: not run (budget: only 0 budget(s)" in out
    assert "approach parametric: ran on 34 points" in out


def test_holdout_backtest_on_over_training_data(data_dir, capsys, tmp_path):
    path = data_dir / "gadre2024_overtraining_runs.csv"
    assert cli.main(["fit", str(path), "--bootstrap", "100", *GADRE, "--holdout", "params >= 1e9",
                     "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Backtest: 3 held-out row(s) predicted by the parametric law fitted to the rest" in out
    rows = [line for line in out.splitlines() if line.startswith("| 3") and "%" in line]
    assert len(rows) == 3
    for line in rows:
        assert abs(float(line.rsplit("|", 2)[-2].strip().rstrip("%"))) < 20  # per-row relative error
    assert (tmp_path / "backtest.png").exists()
    laws = fit(path, columns={"loss": "loss_c4_val"}, where='dataset == "c4_original"',
               holdout="params >= 1e9", bootstrap=0)
    assert (laws.points["params"] < 1e9).all() and len(laws.backtest) == 3
    assert np.allclose(laws.backtest["relative_error"],
                       laws.backtest["predicted"] / laws.backtest["loss"] - 1)


def test_data_constrained_runs_fit_both_approaches_and_say_if_they_agree(data_dir, capsys):
    assert cli.main(["fit", str(data_dir / "muennighoff2023_datablations_c4_runs.csv"),
                     "--where", "epochs <= 2", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "approach isoflop: ran on 3 budget(s)" in out and "approach parametric: ran on 59 points" in out
    # three budgets leave the IsoFLOP line one degree of freedom: its a is honest about it
    assert "a = 0.3866 [-0.1872, 0.9604]" in out
    assert "approaches agree (isoflop vs parametric" in out


def test_tie_exponents(sweep):
    laws = fit(sweep, bootstrap=30, approach="parametric", tie_exponents=True)
    p = laws.parametric
    assert p.alpha.value == p.beta.value and p.a.value == pytest.approx(0.5)
    assert np.allclose(p.samples[:, 3], p.samples[:, 4])
    free = fit(sweep, bootstrap=0, approach="parametric").parametric
    assert free.objective <= p.objective


def test_approach_choice_is_validated(sweep):
    with pytest.raises(FitError, match=r"fit\(approach='both'\) must be one of"):
        fit(sweep, approach="both")
    only = fit(sweep, bootstrap=0, approach="parametric")
    assert only.isoflop is None and "isoflop: not run (approach=parametric)" in only.approaches


# --- 5. provenance ---------------------------------------------------------------------

def test_summary_carries_provenance(data_dir):
    import hashlib

    path = data_dir / "epoch_chinchilla_fig4_svg_extracted.csv"
    laws = fit(path, columns={"params": "Model Size", "flops": "Training FLOP"}, bootstrap=0, seed=7,
               drop_highest_loss=5)
    text = laws.summary()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert f"  content: sha256:{digest}" in text
    assert "  mapping: {'params': 'Model Size', 'flops': 'Training FLOP'}" in text
    assert "seed=7" in text and "drop_highest_loss=5" in text
    assert "  versions: flops_fit " in text and "numpy" in text and "scipy" in text and "pandas" in text


def test_uris_are_read_through_pyarrow_filesystems(sweep, tmp_path):
    # s3:// and gs:// go through the same pyarrow call as file://, which needs no network.
    sweep.to_csv(tmp_path / "s.csv", index=False)
    local = fit(tmp_path / "s.csv", bootstrap=0, approach="isoflop")
    remote = fit(f"file://{tmp_path / 's.csv'}", bootstrap=0, approach="isoflop")
    assert remote.isoflop.a.value == local.isoflop.a.value
    assert remote.provenance["content"].startswith("sha256 of the rows fitted:")
    with pytest.raises(FitError, match=r"data: no such file or folder: file://"):
        fit(f"file://{tmp_path / 'missing.csv'}", bootstrap=0)


def test_a_floor_the_optima_cannot_identify_is_said_and_its_interval_stays_non_negative():
    # a law without an irreducible term, at 4 budgets: the floor fit meets its bound E = 0
    data = synthetic_sweep(seed=3, law=dict(E=0.0, A=400.0, B=1500.0, alpha=0.34, beta=0.28), noise=0.01)
    data = data[data["budget"].isin([1e18, 1e19, 1e20, 1e21])]
    laws = fit(data, bootstrap=0, approach="isoflop")
    assert laws.isoflop.E.value == 0 and laws.isoflop.E.low == 0 < laws.isoflop.E.high
    assert any(w.startswith("isoflop loss floor E sits at its bound 0") for w in laws.warnings)
    clean = fit(synthetic_sweep(seed=3), bootstrap=0, approach="isoflop")
    assert clean.isoflop.E.value > 1 and not any("floor E sits" in w for w in clean.warnings)
