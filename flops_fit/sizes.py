"""Where a budget's model sizes come from: the model's parameter count and FLOPs per token
for each value of its size dial (from models built on the meta device, never trained), and
the sizes log-spaced around the prior compute-optimal N* when the user gives none."""

from __future__ import annotations

import math

from . import flops
from .contract import MIN_POINTS_PER_BUDGET


class ModelProbe:
    """Parameter and FLOP counts per size, from models built on the meta device (cached)."""

    def __init__(self, task, param_convention, flops_convention):
        self.task, self.param_convention, self.flops_convention = task, param_convention, flops_convention
        self._params, self._fpt, self._batch = {}, {}, None

    def model(self, size):
        import torch

        try:
            with torch.device("meta"):
                model = self.task.model_fn(size)
        except Exception as e:  # re-raised with the size that caused it
            raise ValueError(f"model_fn({size}) raised {type(e).__name__}: {e}") from e
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model_fn({size}) returned {type(model).__name__}; it must return a torch.nn.Module.")
        return model

    def params(self, size) -> int:
        if size not in self._params:
            n = flops.count_params(self.model(size), self.param_convention)
            if n < 1:
                raise ValueError(f"model_fn({size}) has no {self.param_convention} parameters.")
            self._params[size] = n
        return self._params[size]

    def flops_per_token(self, size) -> float:
        if self.flops_convention == "6N":
            return flops.flops_per_token_6n(self.params(size))
        if size not in self._fpt:
            self._fpt[size] = flops.counted_flops_per_token(
                self.model(size), self.task.loss_fn, self._probe_batch(), self.task.tokens_per_sample
            )
        return self._fpt[size]

    def _probe_batch(self):
        """One sample of the training data, collated as a batch of 1, on the meta device."""
        if self._batch is None:
            from torch.utils.data import default_collate

            from .device import map_tensors

            train, _ = self.task.data()
            batch = default_collate([train[0]])
            self._batch = map_tensors(lambda t: t.to("meta"), batch)
        return self._batch


def prior_optimum(budget, tokens_per_param) -> float:
    """N* with C = 6 N D and D = tokens_per_param · N."""
    return math.sqrt(budget / (flops.FLOPS_PER_PARAM_TOKEN * tokens_per_param))


def sizes_around_prior(budget, candidates, count, tokens_per_param, spread, probe) -> list:
    """`count` candidate sizes around the prior optimum N*: the one nearest each point of a
    log-spaced grid N*/spread .. N*·spread, then, where a coarse dial maps several grid
    points to one size, the unused sizes nearest N* until there are `count`."""
    log_star = math.log(prior_optimum(budget, tokens_per_param))
    logs = {s: math.log(probe.params(s)) for s in candidates}
    targets = [log_star + math.log(spread) * (2 * i / (count - 1) - 1) for i in range(count)]
    chosen = []
    for t in targets:
        best = min(logs, key=lambda s: abs(logs[s] - t))
        if best not in chosen:
            chosen.append(best)
    for s in sorted(logs, key=lambda s: abs(logs[s] - log_star)):
        if len(chosen) >= count:
            break
        if s not in chosen:
            chosen.append(s)
    return sorted(chosen)


def prior_sizes(budget, candidate_sizes, points_per_budget, tokens_per_param, size_spread, probe) -> list:
    """plan_sweep's sizes at `budget` when none are given: `sizes_around_prior`, refused
    where the prior optimum N* lies outside the candidates' span."""
    chosen = sizes_around_prior(budget, candidate_sizes, points_per_budget, tokens_per_param, size_spread, probe)
    n_star = prior_optimum(budget, tokens_per_param)
    span = [probe.params(s) for s in candidate_sizes]
    # Sizes all on one side of N* cannot bracket the optimum a sweep is for.
    if len(chosen) < MIN_POINTS_PER_BUDGET or not min(span) <= n_star <= max(span):
        raise ValueError(
            f"budget {budget:.4g}: the prior optimum N* = {n_star:.3g} parameters is outside the "
            f"{min(span):.3g}..{max(span):.3g} parameters of candidate_sizes "
            f"{min(candidate_sizes)}..{max(candidate_sizes)} (or they give fewer than "
            f"{MIN_POINTS_PER_BUDGET} sizes). Widen candidate_sizes to reach N*, or give `sizes`."
        )
    return chosen
