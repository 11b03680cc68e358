"""What every sweep script shares (examples/sweep.py, examples/images.py, and copies of
them): the flags of what a sweep trains and how it runs, planning and running from those
flags, and the closing report. Kept in the package so that each example file runs on its
own when copied and changed.

Imports neither ray nor torch at import time (run_sweep loads Ray when it is called).
"""

from __future__ import annotations

import dataclasses
import os

import flops_fit as ff
from flops_fit.plan import DEFAULT_SIZE_SPREAD
from flops_fit.contract import UNFINISHED_STATUSES
from flops_fit.fitting.api import DEFAULT_BOOTSTRAP
from flops_fit.sweep_folder import DEFAULT_STORAGE
from flops_fit.task import PRECISIONS

SMOKE_BOOTSTRAP = 200  # --smoke: fewer bootstrap resamples, a quicker fit
FITTED_RULE = "fitted"  # --lr-rule fitted: the rule learned by this run's own LR search
# Point statuses that make a finished sweep exit non-zero: points that did not train to the
# end (diverged, skipped and lr-not-bracketed are results of a point, not failures).
PREDICTION_FACTOR = 100  # the report predicts for this many times the largest budget


def add_plan_arguments(p, budgets, points_per_budget, tokens_per_param, per: str,
                       size_spread: float = DEFAULT_SIZE_SPREAD):
    """The flags of what a sweep trains (budgets and sizes), shared by every example;
    `per` names what D counts (tokens, patches)."""
    p.add_argument("--budgets", type=float, nargs="+", default=budgets, help="compute budgets, FLOPs")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="model sizes (the dial) to train at every budget")
    p.add_argument("--points-per-budget", type=int, default=points_per_budget,
                   help="without --sizes: this many sizes per budget, centred on a prior optimum")
    p.add_argument("--tokens-per-param", type=float, default=tokens_per_param,
                   help=f"prior {per} per parameter at the optimum, to centre the sizes")
    p.add_argument("--size-spread", type=float, default=size_spread,
                   help="without --sizes: the sizes span N*/spread .. N*·spread around the prior optimum N*")


def add_run_arguments(p):
    """The flags of how and where a sweep runs, shared by every example."""
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per point")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (precision: see --precision)")
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="samples per forward/backward on one worker; the rest of its share of the "
                        "batch is accumulated (default 0: the whole share at once)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on GPUs that have it, else fp16 with loss scaling; fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on each worker")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--storage-path", default=os.environ.get("FLOPS_FIT_STORAGE", DEFAULT_STORAGE),
                   help=f"folder or URI for results (default: $FLOPS_FIT_STORAGE or {DEFAULT_STORAGE})")
    p.add_argument("--name", default=None, help="sweep name; the same name again resumes")
    p.add_argument("--max-concurrent", type=int, default=None, help="points trained at once")
    p.add_argument("--max-failures", type=int, default=2,
                   help="worker-group restarts per point, each from its last checkpoint; "
                        "-1 = retry forever (spot / preemptible nodes)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples for intervals")
    p.add_argument("--dry-run", action="store_true",
                   help="rehearse the sweep on Ray with losses drawn from Chinchilla's law")
    p.add_argument("--adaptive", action="store_true",
                   help="bracket-seeking: add sizes where a budget's optimum is not bracketed and "
                        "re-centre later budgets on the fitted power law (run_sweep search='bracket')")
    p.add_argument("--max-points", type=int, default=None,
                   help="with --adaptive: the most points trained in all (default: the plan's "
                        "points plus 4 per budget)")
    p.add_argument("--lr-rule", default=None, metavar="SWEEP|fitted",
                   help="train with the rule lr_opt = c N^-g fitted to the LR-searched sweep in this folder "
                        "instead of --lr; 'fitted' (with --lr-search): search the smallest budgets, then "
                        "train the others once per point with the rule fitted to them")
    p.add_argument("--lr-search-budgets", type=int, default=None, metavar="K",
                   help="with --lr-rule fitted: how many of the smallest budgets are LR-searched "
                        "(default: the smaller half, rounded up)")
    p.add_argument("--lr-search", type=float, nargs="+", default=None, metavar="MULTIPLIER",
                   help="train every point at these multiples of its learning rate (e.g. 0.25 0.5 1 2 4) "
                        "and keep the best; a point whose best is the smallest or largest is "
                        "flagged 'LR not bracketed' and left out of the fit")


def finish_args(p, argv, smoke: dict, names: tuple):
    """Add --smoke and parse. --smoke swaps in `smoke`'s budgets and sizes (and
    SMOKE_BOOTSTRAP resamples); without --name, the name is names[0] (smoke), names[1] (dry run)
    or names[2]."""
    p.add_argument("--smoke", action="store_true", help="a tiny sweep: a quick check that all works")
    args = p.parse_args(argv)
    if args.smoke:
        args.budgets, args.sizes = smoke["budgets"], args.sizes or smoke["sizes"]
        args.bootstrap = min(args.bootstrap, SMOKE_BOOTSTRAP)
    if args.name is None:
        args.name = names[0] if args.smoke else (names[1] if args.dry_run else names[2])
        if args.adaptive:  # a searched sweep never resumes a static one of the same flags
            args.name += "-adaptive"
        if args.lr_rule == FITTED_RULE:
            args.name += "-lr-fitted"
        elif args.lr_search:  # nor an LR-searched one an unsearched one
            args.name += "-lr"
        if args.lr_rule and args.lr_rule != FITTED_RULE:
            args.name += "-lr-rule"
    if args.max_points is not None and not args.adaptive:
        p.error("--max-points bounds a search: add --adaptive, or leave --max-points out")
    _check_fitted_rule(p, args)
    return args


def _check_fitted_rule(p, args) -> None:
    """--lr-rule fitted and --lr-search-budgets: refused before any compute unless they can work."""
    fitted = args.lr_rule == FITTED_RULE
    if args.lr_search_budgets is not None and not fitted:
        p.error("--lr-search-budgets chooses the budgets searched before --lr-rule fitted: add "
                "--lr-rule fitted, or leave --lr-search-budgets out")
    if not fitted:
        return
    if not args.lr_search:
        p.error("--lr-rule fitted learns the rule from an LR search: add --lr-search, e.g. "
                "--lr-search 0.3 1 3")
    n = len(set(args.budgets))
    if n < 2:
        p.error("--lr-rule fitted searches the smallest budgets and trains the others with the fitted "
                "rule: give at least 2 --budgets")
    searched = args.lr_search_budgets
    if searched is not None and not 1 <= searched < n:
        p.error(f"--lr-search-budgets must be between 1 and {n - 1} (the number of --budgets less one), "
                "so that some budgets are searched and some use the fitted rule")


def split_budgets(budgets, searched: int | None) -> tuple[list, list]:
    """(the budgets to LR-search, the budgets to train with the fitted rule): the `searched`
    smallest ones (default the smaller half, rounded up), the rest. Small budgets are the
    cheap ones, so learning the rule there and reusing it on the large ones saves most of a
    searched sweep's cost."""
    budgets = sorted(set(float(b) for b in budgets))
    k = searched if searched is not None else (len(budgets) + 1) // 2
    return budgets[:k], budgets[k:]


def learning_rate(args):
    """Task.lr from the flags: --lr, or with --lr-rule the rule fitted to that LR-searched
    sweep (flops_fit.lr_search.fit_lr_law on its points, lr_opt = c N^-g)."""
    if not args.lr_rule or args.lr_rule == FITTED_RULE:  # fitted: --lr centres the search
        return args.lr
    return _fitted_lr_rule(ff.load_results(args.lr_rule), args.lr_rule)


def _fitted_lr_rule(searched, where: str):
    """The Task rule lr_opt = c N^-g fitted to the LR-searched sweep `searched`; SystemExit
    with the fix when it has no search or too few bracketed points."""
    from flops_fit.lr_search import fit_lr_law

    if searched.siblings is None:
        raise SystemExit(f"--lr-rule: the sweep at {where} has no learning-rate search; "
                         "give the folder of a sweep run with --lr-search.")
    try:
        law = fit_lr_law(searched.table)
    except ValueError as e:
        raise SystemExit(f"--lr-rule: {e}") from None
    print(f"Learning rate from {where}: {law.describe()}", flush=True)
    return law.rule()


def run_settings(args) -> dict:
    """The Task fields set by the run flags: how each worker trains, not what it trains."""
    return dict(micro_batch_size=args.micro_batch_size, precision=args.precision, compile=args.compile)


def plan_and_run(task, args):
    """Plan the sweep the flags describe and run it on Ray; the SweepResults.

    With --lr-rule fitted, one plan run as two sweeps: its smallest budgets LR-searched
    (sweep `<name>-lr-search`), then its other budgets trained once per point with the
    rule lr_opt = c N^-g fitted to the first (sweep `<name>`); the results hold both tables.
    """
    plan = ff.plan_sweep(task, args.budgets, sizes=args.sizes, points_per_budget=args.points_per_budget,
                         tokens_per_param=args.tokens_per_param, size_spread=args.size_spread)
    if args.lr_rule != FITTED_RULE:
        return _run(plan, task, args, args.name, args.lr_search)
    searched_budgets, rule_budgets = split_budgets(args.budgets, args.lr_search_budgets)
    search_name = f"{args.name}-lr-search"
    print(f"Learning-rate search on budgets {', '.join(f'{b:.3g}' for b in searched_budgets)} (sweep "
          f"{search_name!r}), then the fitted rule on {', '.join(f'{b:.3g}' for b in rule_budgets)} "
          f"(sweep {args.name!r}).", flush=True)
    searched = _run(plan.of_budgets(searched_budgets), task, args, search_name, args.lr_search)
    if (searched.table["status"].isin(UNFINISHED_STATUSES)).any():
        raise SystemExit(f"--lr-rule fitted: {searched.status_line()} Rerun the same command to resume "
                         "the search; the rest of the budgets start once every searched point has finished.")
    rule = _fitted_lr_rule(searched, searched.path)
    rest = _run(plan.of_budgets(rule_budgets), dataclasses.replace(task, lr=rule), args, args.name, None)
    import pandas as pd

    table = pd.concat([searched.table, rest.table], ignore_index=True)
    print(f"Results: {searched.results_csv} (LR search), {rest.results_csv} (fitted rule)", flush=True)
    return dataclasses.replace(rest, table=table, plan=None, siblings=searched.siblings)


def _run(plan, task, args, name, lr_search):
    return ff.run_sweep(
        task, plan, name=name, storage_path=args.storage_path, num_workers=args.num_workers,
        use_gpu=args.gpu, address=args.address, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, dry_run=args.dry_run,
        search=ff.BracketSearchOptions(max_points=args.max_points) if args.adaptive else None, lr_search=lr_search,
    )


def exit_status(results, laws) -> int:
    """The sweep script's exit code: 0 when every point finished and the laws were fitted,
    1 otherwise (points failed or unfinished, or no law could be fitted), so that a job
    runner or CI sees a sweep that did not give an answer."""
    unfinished = results.table["status"].isin(UNFINISHED_STATUSES).sum()
    if unfinished:
        print(f"\n{unfinished} point(s) failed or did not finish (see their error column in "
              f"{results.results_csv}); rerun the same command to retry them.", flush=True)
    return 1 if unfinished or laws is None else 0


def lr_search_report(results):
    """For an LR-searched sweep: print the best multiplier per point and the fitted rule
    lr_opt(N); return (that text, the optimal_lr figure), or None for a sweep without one."""
    if results.siblings is None:
        return None
    from flops_fit.lr_search import fit_lr_law
    from flops_fit.plots import plot_optimal_lr
    from flops_fit.report import lr_search_text

    # the searched points only (with --lr-rule fitted the table also holds the rule's points)
    searched = results.table[results.table["lr_multiplier"].notna()]
    try:
        law = fit_lr_law(searched)
    except ValueError as e:  # too few bracketed points for a power law: the table alone
        law = None
        print(f"\nNo learning-rate rule fitted: {e}")
    text = lr_search_text(searched, law)
    print("\nLearning-rate search (the point's loss is its best sibling's):\n" + text)
    return text, plot_optimal_lr(searched, law)


def report(results, args, loss_unit: str = "nats/token"):
    """Fit the finished sweep and print / write the answer; None if it cannot be fitted.

    A sweep too small for the laws (fewer than 3 budgets with a bracketed optimum, as a
    --smoke run may be) is still a finished sweep: its table is printed with the reason,
    and `flops-fit fit` can refit results.csv later.
    """
    lr_lines = lr_search_report(results)
    try:
        laws = ff.fit(results, bootstrap=args.bootstrap)
    except ff.FitError as e:
        print("\n" + results.to_markdown())
        print(f"\nThe sweep is too small to fit the scaling laws: {e}\nResults: {results.results_csv}")
        return None
    target = PREDICTION_FACTOR * max(args.budgets)
    # judge the approaches' agreement where the prediction below is made
    laws = dataclasses.replace(laws, agreement=laws.compare(target))
    # The report goes to the sweep folder, never to the working directory (under `ray job
    # submit` that is a temporary copy deleted with the job); a sweep in cloud storage gets
    # it in its bucket.
    from flops_fit.report import write_report
    from flops_fit.sweep_folder import SweepFolder

    prediction = laws.predict(target)
    written = write_report(SweepFolder(results.path).report_dir, laws, prediction=prediction,
                           lr_search=lr_lines)
    print("\n" + laws.summary())
    print("\nCompute-optimal allocation (Chinchilla Table 3 style):\n" + laws.to_markdown())
    print(f"\nPrediction for C = {target:.3g} FLOPs ({PREDICTION_FACTOR}x the largest budget):")
    for row in prediction.itertuples():
        print(f"  {row.approach:<11} N = {row.params:,.0f} [{row.params_low:,.0f}, {row.params_high:,.0f}]"
              f"  D = {row.tokens:,.0f} [{row.tokens_low:,.0f}, {row.tokens_high:,.0f}]"
              f"  loss = {row.loss:.3f} [{row.loss_low:.3f}, {row.loss_high:.3f}] {loss_unit}")
    print("\nWritten:")
    for path in [results.results_csv, *written]:
        print(f"  {path}")
    return laws
