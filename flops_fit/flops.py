"""FLOP and parameter arithmetic: C = FLOPs(N, D) and the conventions behind N.

Pure functions; torch is imported only inside the functions that inspect a model.

Conventions (they change fitted exponents, so a plan records which one it used):
- Parameters: "non_embedding" excludes the weights of `nn.Embedding` modules (token and
  position tables), as in Kaplan et al. 2020 (arXiv:2001.08361, sec. 2.1); "all" counts
  every parameter, as in Hoffmann et al. 2022 (Chinchilla). Porian et al. 2024
  (arXiv:2406.19146) trace much of the Kaplan/Chinchilla disagreement to this choice.
- FLOPs per token: "6N" is the standard estimate C = 6·N·D (forward 2N + backward 4N per
  token, attention ignored; Kaplan et al. 2020 eq. 2.1); "counted" measures one forward +
  backward step of the real model with torch.utils.flop_counter, attention included.
"""

from __future__ import annotations


PARAM_CONVENTIONS = ("non_embedding", "all")
FLOPS_CONVENTIONS = ("6N", "counted")
# Training FLOPs per parameter per token for a dense transformer: 2 (forward) + 4 (backward),
# Kaplan et al. 2020 eq. 2.1; Chinchilla uses C = 6ND throughout. The one home of the 6.
FLOPS_PER_PARAM_TOKEN = 6.0


def count_params(model, convention: str = "non_embedding") -> int:
    """Number of parameters of `model` under `convention` (works on the meta device)."""
    import torch.nn as nn

    check_param_convention(convention)
    total = sum(p.numel() for p in model.parameters())
    if convention == "all":
        return int(total)
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    return int(sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids))


def flops_per_token_6n(params: int) -> float:
    """Training FLOPs per token under C = 6·N·D."""
    return FLOPS_PER_PARAM_TOKEN * params


def counted_flops_per_token(model, loss_fn, batch, tokens_in_batch: int) -> float:
    """Training FLOPs per token measured on one forward + backward step.

    The model and batch may live on the meta device: the counter needs only shapes, so
    even a model too large for this machine is counted without memory.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(model, batch)
        loss.backward()
    return counter.get_total_flops() / tokens_in_batch


def tokens_for_budget(budget: float, flops_per_token: float) -> float:
    """Tokens D that spend `budget` FLOPs at `flops_per_token` (not yet rounded)."""
    return budget / flops_per_token


def check_param_convention(convention: str) -> None:
    if convention not in PARAM_CONVENTIONS:
        raise ValueError(f"param_convention={convention!r}: use one of {PARAM_CONVENTIONS}.")


def check_flops_convention(convention: str) -> None:
    if convention not in FLOPS_CONVENTIONS:
        raise ValueError(f"flops_convention={convention!r}: use one of {FLOPS_CONVENTIONS}.")
