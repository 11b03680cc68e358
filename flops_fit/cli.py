"""`flops-fit` command: fit scaling laws to a stored sweep or any published table.

    flops-fit fit PATH [--approach auto|isoflop|parametric] [--optimum parabola|lowest|given]
                  [--predict 1e21 ...] [--plots DIR] [--map COL=SOURCE ...] [--where EXPR ...]
                  [--holdout EXPR] [--drop-highest-loss K] [--budget-rtol R]
                  [--bootstrap N] [--seed S] [--tie-exponents] [--huber-delta DELTA]

--map COL=SOURCE sets our column COL (params, tokens, loss, flops, budget, status, error,
run, max_tokens, epochs, unique_tokens) from SOURCE, a column of the file or a safe
expression over its columns (names with spaces or '/' in backticks; see
flops_fit/expressions.py for what is allowed), e.g. --map params="Model Size" or
--map flops='`throughput/total_gflops` * 1e9'. With no tokens column D = C/(6N) is
derived (and N = C/(6D) with no params column); max_tokens (the run's planned tokens),
epochs and unique_tokens only feed warnings (checkpoints, data repeated beyond 4 epochs).
Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from flops_fit.fitting import APPROACHES, BUDGET_RTOL, MAX_BOOTSTRAP, OPTIMUM_RULES, FitError, fit
from flops_fit.fitting.api import DEFAULT_BOOTSTRAP
from flops_fit.law import HUBER_DELTA

EXIT_BAD_INPUT = 2


def _mapping(items):
    out = {}
    for item in items or []:
        col, sep, source = item.partition("=")
        if not sep or not col.strip() or not source.strip():
            raise FitError(f"--map: expected COL=SOURCE, got {item!r}")
        out[col.strip()] = source.strip()
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag and the fix), exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _as_flags(message: str) -> str:
    """`fit(seed=-1) must be ...` -> `--seed -1 must be ...`: on the command line the
    argument is a flag."""
    return re.sub(r"^fit\((\w+)=([^)]*)\)", lambda m: f"--{m.group(1).replace('_', '-')} {m.group(2)}", message)


def _sweep_keeping_lr_unbracketed(path: str):
    """The sweep folder at `path` with its LR-not-bracketed points kept (results.load_results)."""
    from flops_fit.results import load_results

    try:
        results = load_results(path, keep_lr_unbracketed=True)
    except (OSError, ValueError) as err:
        raise FitError(f"--keep-lr-unbracketed takes a sweep folder: {err}") from None
    if results.siblings is None:
        raise FitError("--keep-lr-unbracketed: the sweep has no learning-rate search (no lr_search.json)")
    return results


def build_parser():
    parser = _Parser(prog="flops-fit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("fit", help="fit IsoFLOP and parametric scaling laws; print summary and table")
    p.add_argument("path", help="results CSV / JSON / JSONL file or stored sweep directory")
    p.add_argument("--approach", choices=APPROACHES, default="auto",
                   help="auto: L(N, D) whenever possible, IsoFLOP laws where budgets have enough sizes")
    p.add_argument("--optimum", choices=OPTIMUM_RULES, default="parabola",
                   help="per-budget optimum: parabola vertex in ln N, the lowest-loss run, or "
                        "given (each row is already a budget's optimum)")
    p.add_argument("--holdout", metavar="EXPR",
                   help="backtest: fit the other rows, predict these rows' loss, print the errors")
    p.add_argument("--tie-exponents", action="store_true", help="fit L(N, D) with alpha = beta")
    p.add_argument("--holdout-budgets", type=int, default=0, metavar="K",
                   help="backtest: leave the K largest budgets out of both approaches, predict their "
                        "optima, print the errors against prediction intervals")
    p.add_argument("--huber-delta", type=float, default=HUBER_DELTA, metavar="DELTA",
                   help="Huber threshold on residuals of ln loss in the L(N, D) fit (default "
                        f"{HUBER_DELTA:g}, Hoffmann et al. 2022; residuals far above it make the fit a median fit)")
    p.add_argument("--predict", type=float, nargs="+", metavar="FLOPS",
                   help="compute budgets (FLOPs) for the table instead of the defaults")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--map", action="append", metavar="COL=SOURCE",
                   help="our column from their column or a safe expression (repeatable)")
    p.add_argument("--where", action="append", metavar="EXPR",
                   help="keep rows where the expression is true (repeatable); "
                        "dropped rows are reported as excluded")
    p.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="exclude the K highest-loss usable rows (Besiroglu et al. 2024 use 5)")
    p.add_argument("--budget-rtol", type=float, default=BUDGET_RTOL, metavar="R",
                   help="with no budget column, group points whose FLOPs agree within R")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"bootstrap replicates for intervals (0 disables; at most {MAX_BOOTSTRAP})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    p.add_argument("--keep-lr-unbracketed", action="store_true",
                   help="a learning-rate searched sweep folder: fit its points whose best LR is the "
                        "smallest or largest multiplier tried too (left out by default)")
    return parser


def main(argv=None):
    """Entry point of `flops-fit`; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # usage error (one line, status 2) or --help (status 0)
        return done.code
    try:
        data = args.path
        if args.keep_lr_unbracketed:
            data = _sweep_keeping_lr_unbracketed(args.path)
        laws = fit(data, approach=args.approach, optimum=args.optimum, bootstrap=args.bootstrap,
                   seed=args.seed, columns=_mapping(args.map), where=args.where, holdout=args.holdout,
                   holdout_budgets=args.holdout_budgets,
                   drop_highest_loss=args.drop_highest_loss, budget_rtol=args.budget_rtol,
                   tie_exponents=args.tie_exponents, huber_delta=args.huber_delta)
        if args.predict:  # judge the approaches where the user will use them
            laws = dataclasses.replace(laws, agreement=laws.compare(args.predict))

        table = laws.to_markdown(args.predict)
        summary = laws.summary()
        written = []
        if args.plots:
            from flops_fit.report import write_report

            written = write_report(args.plots, laws, texts=False)
    except FitError as err:
        print(f"flops-fit: error: {_as_flags(' '.join(str(err).split()))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary)
    print()
    print(table)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
