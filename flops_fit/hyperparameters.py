"""Hyperparameter rules: a peak learning rate (or warmup, or batch) as a function of the
sweep point (N, D, C), so that every size trains with a setting that suits it.

One fixed learning rate across an IsoFLOP sweep measures the sizes that this rate happens
to suit: Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of
Language Models") trace much of the Kaplan/Chinchilla gap in the N_opt exponent to it. A
rule is evaluated once per point on the sweep's driver, and its value travels with the
point (results.csv records it per point as `lr`, `warmup`).

Units: N (`params`) in parameters under the plan's convention, D (`tokens`) in tokens,
C (`flops`) in FLOPs; a learning rate is AdamW's peak rate; a batch in tokens.

Pure math: never imports ray or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import checks

# The published fits below were fitted on models of 1e8-1e10 parameters and budgets of
# 1e17-1e21 FLOPs (DeepSeek) or 6e7-1e9 non-embedding parameters (Step Law); at the
# 1e3-1e6 parameters of a CPU sweep they are extrapolations by orders of magnitude.

# DeepSeek LLM (DeepSeek-AI 2024, arXiv:2401.02954), eq. 1: eta_opt = 0.3118 C^-0.1250,
# B_opt = 0.2920 C^0.3271, with C = M D in FLOPs (M: non-embedding FLOPs per token,
# attention included) and B in tokens.
DEEPSEEK_LR = (0.3118, 0.1250)  # (coefficient, exponent of C^-g)
DEEPSEEK_BATCH = (0.2920, 0.3271)  # (coefficient, exponent of C^+g), tokens
# Step Law (Li et al. 2025, "Predictable Scale: Part I", arXiv:2503.04715), eqs. for the
# optimal hyperparameters: eta(N, D) = 1.79 N^-0.713 D^0.307 (N non-embedding parameters,
# D tokens), B(D) = 0.58 D^0.571 tokens.
STEP_LAW_LR = (1.79, 0.713, 0.307)  # (coefficient, exponent of N^-g, exponent of D^+h)
STEP_LAW_BATCH = (0.58, 0.571)  # (coefficient, exponent of D^+h), tokens

VARIABLES = ("N", "D", "C")


class Rule:
    """A hyperparameter as a function of the point: rule(params, tokens, flops) -> value.

    Subclasses are frozen dataclasses: a rule pickles to Ray's workers, and its repr (the
    record of the sweep's task) is the same in every process.
    """

    def __call__(self, params: float, tokens: float, flops: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Rule):
    """The same value at every point."""

    value: float

    def __call__(self, params, tokens, flops):
        return float(self.value)


@dataclass(frozen=True)
class PowerLaw(Rule):
    """coefficient * X^-exponent, X one of N (parameters), D (tokens), C (FLOPs); with
    `tokens_exponent` h, also times D^h (the Step Law form c N^-g D^h)."""

    coefficient: float
    exponent: float
    of: str = "N"
    tokens_exponent: float = 0.0

    def __post_init__(self):
        if self.of not in VARIABLES:
            raise ValueError(f"PowerLaw(of=...) must be one of {VARIABLES}: the variable X of c * X^-g.")
        for name in ("coefficient", "exponent", "tokens_exponent"):
            value = getattr(self, name)
            if not (checks.is_real(value) and math.isfinite(value)):
                raise ValueError(f"PowerLaw({name}=...) must be a finite number.")
        if self.coefficient <= 0:
            raise ValueError("PowerLaw(coefficient=...) must be > 0: c in c * X^-g.")

    def __call__(self, params, tokens, flops):
        x = {"N": params, "D": tokens, "C": flops}[self.of]
        return self.coefficient * x ** -self.exponent * tokens ** self.tokens_exponent


def constant(value: float) -> Constant:
    """The same value at every point."""
    return Constant(value)


def power_law(coefficient: float, exponent: float, of: str = "N") -> PowerLaw:
    """coefficient * X^-exponent with X = N (parameters), D (tokens) or C (FLOPs)."""
    return PowerLaw(coefficient, exponent, of)


def deepseek_lr() -> PowerLaw:
    """DeepSeek LLM's optimal peak LR, 0.3118 C^-0.1250 (C in FLOPs; arXiv:2401.02954, eq. 1).

    Fitted at 1e17-1e21 FLOPs with a multi-step schedule; DeepSeek's C counts attention
    FLOPs (M D), here C is the point's FLOPs under the plan's convention.
    """
    return PowerLaw(DEEPSEEK_LR[0], DEEPSEEK_LR[1], "C")


def step_law_lr() -> PowerLaw:
    """Step Law's optimal peak LR, 1.79 N^-0.713 D^0.307 (N non-embedding parameters, D
    tokens; Li et al. 2025, arXiv:2503.04715), fitted on 6e7-1e9 parameter models."""
    return PowerLaw(STEP_LAW_LR[0], STEP_LAW_LR[1], "N", STEP_LAW_LR[2])


def deepseek_batch_tokens() -> PowerLaw:
    """DeepSeek LLM's optimal batch, 0.2920 C^0.3271 tokens (C in FLOPs; arXiv:2401.02954, eq. 1)."""
    return PowerLaw(DEEPSEEK_BATCH[0], -DEEPSEEK_BATCH[1], "C")


def step_law_batch_tokens() -> PowerLaw:
    """Step Law's optimal batch, 0.58 D^0.571 tokens (D tokens; arXiv:2503.04715)."""
    return PowerLaw(STEP_LAW_BATCH[0], -STEP_LAW_BATCH[1], "D")


@dataclass(frozen=True)
class InSamples(Rule):
    """A batch rule in tokens per optimizer step (deepseek_batch_tokens, step_law_batch_tokens)
    as samples per step, the unit of Task.batch_size: its value / tokens_per_sample."""

    tokens_rule: Rule
    tokens_per_sample: int

    def __post_init__(self):
        if not isinstance(self.tokens_rule, Rule):
            raise ValueError("batch_in_samples(rule, ...): rule must be a rule of the point, e.g. "
                             "hyperparameters.deepseek_batch_tokens().")
        checks.integer(self.tokens_per_sample, "batch_in_samples", "tokens_per_sample", "Task.tokens_per_sample")

    def __call__(self, params, tokens, flops):
        return self.tokens_rule(params, tokens, flops) / self.tokens_per_sample


def batch_in_samples(rule: Rule, tokens_per_sample: int) -> InSamples:
    """`rule` (a batch in tokens) as a Task.batch_size rule (samples per optimizer step),
    e.g. Task(batch_size=batch_in_samples(deepseek_batch_tokens(), 128), tokens_per_sample=128)."""
    return InSamples(rule, tokens_per_sample)


def evaluate(rule, params: float, tokens: float, flops: float, what: str) -> float:
    """The value of `rule` at the point (N, D, C): a number as it is, a Rule of (N, D, C),
    any other callable of N alone (the older `lr=lambda n: ...` form). Raises ValueError
    naming `what` when the value is not a finite number (a rule returning NaN)."""
    if isinstance(rule, Rule):
        value = rule(params, tokens, flops)
    elif callable(rule):
        value = rule(params)
    else:
        value = rule
    if not (checks.is_real(value) and math.isfinite(value)):
        raise ValueError(f"{what} is not a finite number at N={params:.4g}, D={tokens:.4g}, C={flops:.4g}; "
                         "the rule must give a finite value at every point of the plan.")
    return float(value)
