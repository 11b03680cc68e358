"""Plan an IsoFLOP sweep: for each compute budget C, a set of model sizes N and the token
count D that spends C on each (Hoffmann et al. 2022, "Approach 2").

Pure planning: models are instantiated on torch's meta device to count parameters and
FLOPs, so planning a sweep of billion-parameter models takes no memory. Never imports ray.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
import dataclasses
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from . import checks
from . import flops
from .contract import MIN_BUDGETS, MIN_POINTS_PER_BUDGET
from .sizes import ModelProbe, prior_sizes

DEFAULT_POINTS_PER_BUDGET = 7  # Chinchilla used 9-ish per budget; 7 brackets a parabola well
DEFAULT_TOKENS_PER_PARAM = 20.0  # prior optimum D/N (Hoffmann et al. 2022, Table 3) to centre sizes
DEFAULT_SIZE_SPREAD = 4.0  # sizes span N*/spread .. N*·spread around the prior optimum N*
DEFAULT_CANDIDATE_SIZES = range(1, 33)  # dial values searched when `sizes` is not given
DEFAULT_MIN_STEPS = 20  # fewer optimizer steps than this is not a training run (warmup alone)


@dataclass(frozen=True)
class SweepPoint:
    """One training run of the sweep.

    budget and flops are FLOPs; params is N under the plan's parameter convention; tokens
    is D (= steps x the global batch in tokens); flops_per_token is training FLOPs per token;
    batch_size is the point's own global batch in samples when Task.batch_size is a rule
    (0: the Task's number).
    """

    point_id: str
    budget: float
    size: int
    params: int
    flops_per_token: float
    steps: int
    tokens: int
    flops: float
    batch_size: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "SweepPoint":
        fields = cls.__dataclass_fields__
        return cls(**{k: d[k] for k in fields if k in d or fields[k].default is dataclasses.MISSING})


@dataclass(frozen=True)
class SweepPlan:
    """The points of a sweep plus the conventions that give their numbers meaning."""

    points: tuple
    batch_tokens: int  # tokens per optimizer step (global batch); 0: per point (a batch rule)
    param_convention: str
    flops_convention: str
    dropped: tuple = field(default_factory=tuple)  # dicts: budget, size, reason

    @property
    def budgets(self) -> list:
        return sorted({p.budget for p in self.points})

    @property
    def total_flops(self) -> float:
        return sum(p.flops for p in self.points)

    def __len__(self) -> int:
        return len(self.points)

    def of_budgets(self, budgets) -> "SweepPlan":
        """The part of this plan at `budgets` (FLOPs): its points and dropped sizes there."""
        keep = {float(b) for b in budgets}
        return replace(self, points=tuple(p for p in self.points if p.budget in keep),
                       dropped=tuple(d for d in self.dropped if float(d["budget"]) in keep))

    def __iter__(self):
        return iter(self.points)

    def __repr__(self) -> str:
        """One line (a notebook shows it); `summary()` lists the points."""
        span = f"{self.budgets[0]:.3g}..{self.budgets[-1]:.3g} FLOPs" if self.points else "no budget"
        return (f"SweepPlan({len(self.points)} points over {len(self.budgets)} budgets, {span}; "
                f"N {self.param_convention}, FLOPs per token {self.flops_convention}; {len(self.dropped)} dropped)")

    def summary(self) -> str:
        lines = [
            f"IsoFLOP sweep plan: {len(self.points)} points over {len(self.budgets)} budgets, "
            f"total {self.total_flops:.3g} FLOPs",
            f"  N = {self.param_convention} parameters; FLOPs per token = {self.flops_convention}; "
            f"global batch = {self.batch_tokens} tokens" if self.batch_tokens else
            "global batch per point (a Task.batch_size rule): " + ", ".join(
                f"{p.point_id} {p.batch_size}" for p in self.points) + " samples",
            f"  {'point_id':<22} {'budget':>10} {'size':>5} {'params':>11} {'tokens':>12} "
            f"{'steps':>7} {'tok/param':>9} {'flops':>10}",
        ]
        for p in self.points:
            lines.append(
                f"  {p.point_id:<22} {p.budget:>10.3g} {p.size:>5d} {p.params:>11,d} {p.tokens:>12,d} "
                f"{p.steps:>7d} {p.tokens / p.params:>9.1f} {p.flops:>10.3g}"
            )
        for d in self.dropped:
            lines.append(f"  dropped: budget {d['budget']:.3g}, size {d['size']}: {d['reason']}")
        return "\n".join(lines)

    def to_json(self, path=None) -> str:
        """The plan as JSON text; also written to `path` when given."""
        text = json.dumps(
            {
                "points": [asdict(p) for p in self.points],
                "batch_tokens": self.batch_tokens,
                "param_convention": self.param_convention,
                "flops_convention": self.flops_convention,
                "dropped": list(self.dropped),
            },
            indent=1,
        )
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path) -> "SweepPlan":
        """Inverse of `to_json`: accepts the JSON text or a path to it.

        An `os.PathLike`, or a str naming an existing file, is read as a path; any other
        str is parsed as JSON text, so that text which is not a plan ('', '[1, 2]') is
        reported as such instead of being looked up as a file name.
        """
        is_path = isinstance(text_or_path, os.PathLike) or (
            isinstance(text_or_path, str) and _is_file(text_or_path)
        )
        if not is_path:
            text = str(text_or_path)
            try:
                return cls.from_text(text)
            except ValueError as e:
                if "\n" in text or text.lstrip().startswith(("{", "[")) or not text.strip():
                    raise
                # one line of non-JSON reads like a mistyped file name
                raise ValueError(f"{e} No file {text!r} exists either: check the path.") from e.__cause__
        try:
            text = Path(text_or_path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"Cannot read the sweep plan file {text_or_path} ({e}): give the path of a plan.json "
                "that SweepPlan.to_json wrote."
            ) from e
        return cls.from_text(text, source=str(text_or_path))

    @classmethod
    def from_text(cls, text: str, source: str | None = None) -> "SweepPlan":
        """Parse JSON text (never a path); `source` names the file it came from, if any."""
        where = f"the file {source}" if source is not None else "the text given"
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError(f"the JSON is a {type(d).__name__}, not an object")
            return cls(
                points=tuple(SweepPoint.from_dict(p) for p in d["points"]),
                batch_tokens=int(d["batch_tokens"]),
                param_convention=d["param_convention"],
                flops_convention=d["flops_convention"],
                dropped=tuple(d.get("dropped", ())),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"Not a flops_fit sweep plan ({type(e).__name__}: {e}): {where}. "
                "Give the text or file that SweepPlan.to_json wrote."
            ) from e


def point_id(budget: float, size: int) -> str:
    """Deterministic, filesystem-safe id of the point (budget, size), e.g. 'C1e+12-s4'.

    Four significant digits keep ids short and readable; plan_sweep refuses budgets so
    close that their ids would clash (they would share one trial folder).
    """
    return f"C{budget:.4g}-s{size}"


def steps_for(budget: float, flops_per_token: float, batch_tokens: int) -> int:
    """Optimizer steps (whole global batches of `batch_tokens`) that spend `budget` FLOPs at
    this many training FLOPs per token."""
    return round(flops.tokens_for_budget(budget, flops_per_token) / batch_tokens)


def sweep_point(pid: str, budget: float, size: int, params: int, flops_per_token: float, steps: int,
                batch_tokens: int, batch_size: int = 0) -> SweepPoint:
    """The point training `size` for `steps` optimizer steps: D = steps x batch_tokens tokens
    (batch_size: the point's own batch in samples under a batch rule, else 0)."""
    tokens = steps * batch_tokens
    return SweepPoint(pid, budget, size, params, flops_per_token, steps, tokens, flops_per_token * tokens,
                      batch_size)


def point_batch(task, params: int, budget: float, flops_per_token: float) -> tuple[int, int]:
    """(batch in samples recorded on the point, tokens per optimizer step) at (N, budget):
    (0, the Task's batch in tokens) for a number batch_size; for a rule, its value at the
    point's target D = budget / flops_per_token (the D that whole steps then round)."""
    if not task.batch_rule:
        return 0, task.batch_tokens
    batch = task.batch_at(params, flops.tokens_for_budget(budget, flops_per_token), budget)
    return batch, batch * task.tokens_per_sample


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long for a file name, or holds a NUL byte: text
        return False


def _renamed_flops_convention(flops_convention: str, deprecated: dict) -> str:
    """plan_sweep's `flops_convention`, also taken under its older name `flops_per_token`
    (a float per point everywhere else: SweepPoint.flops_per_token), with a warning."""
    unknown = sorted(set(deprecated) - {"flops_per_token"})
    if unknown:
        raise TypeError(f"plan_sweep() got an unexpected keyword argument {unknown[0]!r}")
    if "flops_per_token" in deprecated:
        warnings.warn("plan_sweep(flops_per_token=...) is deprecated: pass flops_convention=... (\"6N\" or "
                      "\"counted\"); SweepPoint.flops_per_token is the FLOPs per token it gives",
                      DeprecationWarning, stacklevel=3)
        return deprecated["flops_per_token"]
    return flops_convention


def plan_sweep(
    task,
    budgets: Iterable[float],
    *,
    sizes: Sequence[int] | None = None,
    points_per_budget: int = DEFAULT_POINTS_PER_BUDGET,
    param_convention: str = "non_embedding",
    flops_convention: str = "6N",
    candidate_sizes: Sequence[int] = DEFAULT_CANDIDATE_SIZES,
    tokens_per_param: float = DEFAULT_TOKENS_PER_PARAM,
    size_spread: float = DEFAULT_SIZE_SPREAD,
    min_steps: int = DEFAULT_MIN_STEPS,
    **deprecated,
) -> SweepPlan:
    """Plan an IsoFLOP sweep of `task.model_fn` over `budgets` (FLOPs).

    Args:
        task: the `Task`; its model_fn gives N, its global batch rounds D to whole steps,
            and its loss and data give the probe step for counted FLOPs.
        budgets: compute budgets C in FLOPs.
        sizes: dial values to train at every budget; when None, each budget gets
            `points_per_budget` sizes whose N is log-spaced around the prior optimum
            N* = sqrt(C / (6 · tokens_per_param)), chosen among `candidate_sizes`.
        param_convention: "non_embedding" (Kaplan) or "all" (Chinchilla); see flops.py.
        flops_convention: "6N" or "counted" (torch flop counter on the real model), as
            SweepPlan.flops_convention records it (`flops_per_token=`, its older name, warns).
        min_steps: points with fewer optimizer steps are dropped and reported.
    """
    flops_convention = _renamed_flops_convention(flops_convention, deprecated)
    flops.check_param_convention(param_convention)
    flops.check_flops_convention(flops_convention)
    budgets = _check_budgets(budgets)
    if sizes is not None:
        sizes = check_sizes(sizes, "sizes")
    else:
        points_per_budget = checks.integer(points_per_budget, "plan_sweep", "points_per_budget",
                                      "sizes per budget, enough to fit a parabola",
                                      minimum=MIN_POINTS_PER_BUDGET)
        candidate_sizes = check_sizes(candidate_sizes, "candidate_sizes")
    tokens_per_param = checks.positive_number(
        tokens_per_param, "plan_sweep", "tokens_per_param",
        f"the prior optimum D/N that centres the sizes (Chinchilla: {DEFAULT_TOKENS_PER_PARAM:g})")
    size_spread = checks.positive_number(size_spread, "plan_sweep", "size_spread",
                                    "sizes span N*/spread .. N*·spread", above=1)
    min_steps = checks.integer(min_steps, "plan_sweep", "min_steps", "optimizer steps a point needs", minimum=1)

    probe = ModelProbe(task, param_convention, flops_convention)
    points, dropped = [], []
    for budget in budgets:
        chosen = sizes if sizes is not None else prior_sizes(
            budget, candidate_sizes, points_per_budget, tokens_per_param, size_spread, probe)
        for size in chosen:
            params, fpt = probe.params(size), probe.flops_per_token(size)
            batch, batch_tokens = point_batch(task, params, budget, fpt)
            steps = steps_for(budget, fpt, batch_tokens)
            if steps < min_steps:
                dropped.append({"budget": budget, "size": size,
                                "reason": f"{steps} optimizer steps < min_steps={min_steps} "
                                "(raise the budget or lower the batch size)"})
                continue
            points.append(sweep_point(point_id(budget, size), budget, size, params, fpt, steps, batch_tokens, batch))
    if not points:
        raise ValueError(
            "plan_sweep: every point has fewer than min_steps optimizer steps; raise `budgets` "
            f"(smallest {min(budgets):.3g} FLOPs) or lower Task.batch_size.\n"
            + "\n".join(f"  {d['budget']:.3g} / size {d['size']}: {d['reason']}" for d in dropped)
        )
    _check_unique_ids(points)
    _check_design(points, budgets, dropped)
    # batch_tokens 0: each point has its own batch (a Task.batch_size rule)
    return SweepPlan(tuple(points), 0 if task.batch_rule else task.batch_tokens, param_convention,
                     flops_convention, tuple(dropped))


class PlanWarning(UserWarning):
    """The plan runs, but its points cannot support every law the fit offers."""


def _check_design(points, budgets, dropped) -> None:
    """Refuse a model_fn whose size dial does not change N; warn, before any compute, about
    budgets the IsoFLOP fit cannot use (too few sizes, emptied by min_steps, too few budgets)."""
    import warnings

    by_size = {}
    for p in points:
        by_size.setdefault(p.size, p.params)
    if len(by_size) > 1 and len(set(by_size.values())) == 1:
        raise ValueError(
            f"model_fn: sizes {sorted(by_size)} all give N = {next(iter(by_size.values())):,} parameters; "
            "the size dial must change the parameter count (e.g. width or depth = size)."
        )
    sizes_at = defaultdict(set)
    for p in points:
        sizes_at[p.budget].add(p.params)
    emptied = [b for b in budgets if b not in sizes_at]
    if emptied:
        warnings.warn(
            f"plan_sweep: budget(s) {', '.join(f'{b:.3g}' for b in emptied)} FLOPs lost every point to "
            "min_steps (see plan.dropped); raise them or lower Task.batch_size.", PlanWarning, stacklevel=3)
    thin = {b: len(n) for b, n in sizes_at.items() if len(n) < MIN_POINTS_PER_BUDGET}
    if thin:
        warnings.warn(
            "plan_sweep: budget(s) " + ", ".join(f"{b:.3g} ({n} size{'s' if n != 1 else ''})" for b, n in thin.items())
            + f" FLOPs have fewer than {MIN_POINTS_PER_BUDGET} distinct model sizes: no IsoFLOP parabola "
            "there; give more sizes.", PlanWarning, stacklevel=3)
    usable = len(sizes_at) - len(thin)
    if usable < MIN_BUDGETS:
        warnings.warn(
            f"plan_sweep: {usable} budget(s) with at least {MIN_POINTS_PER_BUDGET} sizes; the IsoFLOP power "
            f"laws need {MIN_BUDGETS} (only the parametric law L(N, D) can be fitted). Add budgets.",
            PlanWarning, stacklevel=3)


def _check_unique_ids(points) -> None:
    """Two points with one id would share one trial folder and one row of the results."""
    budgets_by_id = defaultdict(set)
    for p in points:
        budgets_by_id[p.point_id].add(p.budget)
    clashes = sorted({tuple(sorted(b)) for b in budgets_by_id.values() if len(b) > 1})
    if clashes:
        groups = "; ".join(" and ".join(repr(b) for b in group) for group in clashes)
        raise ValueError(
            f"budgets: {groups} agree to 4 significant digits, so their point ids clash. Budgets this "
            "close are not meaningfully different IsoFLOP curves: merge each group into one budget."
        )


def _check_budgets(budgets) -> list:
    # numpy scalars (a budget grid from np.logspace) become plain floats for the plan's JSON
    return checks.distinct_sorted(budgets, "plan_sweep", "budgets", integers=False,
                             what="a finite positive number of FLOPs",
                             example="compute budgets in FLOPs, e.g. [1e12, 3e12, 1e13]",
                             repeat_note="; each budget is one IsoFLOP curve")


def check_sizes(sizes, name, call: str = "plan_sweep") -> list:
    # numpy integers (np.arange) become plain ints for the plan's JSON and model_fn
    return checks.distinct_sorted(sizes, call, name, integers=True,
                             what="a positive int (model_fn takes one integer size dial)",
                             example="the model_fn dial values to train, e.g. [2, 3, 4]")
