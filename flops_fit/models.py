"""Reference model family: a compact decoder-only GPT with one size dial.

GPT.from_size(size) gives n_layer = size and n_embd = aspect * size (nanochat's "depth"
dial), so non-embedding parameters grow as 12 * aspect^2 * size^3: consecutive sizes are
finely spaced in log N, which is what an IsoFLOP sweep needs. Parameters are counted by
component with a consistency assert, and every model can be built on the meta device,
so a planner can count parameters without allocating memory.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from flops_fit import checks


@dataclass
class GPTConfig:
    vocab_size: int = 256  # tokens; 256 = raw UTF-8 bytes (see data.py), no tokenizer needed
    seq_len: int = 128  # context length in tokens; also the size of the position table
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads; n_embd must be divisible by n_head
    n_embd: int = 64  # residual stream width (model dimension d)


def size_dial(size: int, aspect: int, head_dim: int) -> tuple[int, int, int]:
    """One size dial for every family here: (n_layer, n_head, n_embd) for `size`.

    n_layer = size, n_embd = aspect * size, n_head = n_embd // head_dim (nanochat's depth dial).
    """
    size = checks.integer(size, "model_fn", "size", "it is the number of layers")  # numpy ints are fine
    if aspect < 1 or head_dim < 1:
        raise ValueError(f"aspect and head_dim must be >= 1, got aspect={aspect}, head_dim={head_dim}")
    n_embd = aspect * size
    if n_embd % head_dim != 0:
        raise ValueError(
            f"n_embd = aspect * size = {aspect} * {size} = {n_embd} is not a multiple of "
            f"head_dim={head_dim}; choose aspect as a multiple of head_dim"
        )
    return size, n_embd // head_dim, n_embd


class Attention(nn.Module):
    """Multi-head self-attention; causal for text, bidirectional for image patches."""

    def __init__(self, n_embd: int, n_head: int, causal: bool):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}; "
                "pick n_head so that n_embd // n_head is a whole head dimension"
            )
        self.n_head = n_head
        self.causal = causal
        # no biases anywhere (nanochat, PaLM): fewer parameters to count, no loss in quality
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)  # q, k, v
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)  # 4x as in GPT-2
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, causal: bool):
        super().__init__()
        # pre-norm (GPT-2); LayerNorm without bias: one weight vector of n_embd per norm
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = Attention(n_embd, n_head, causal)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def block_params(n_embd: int) -> int:
    """Parameters of one Block: attention (qkv + proj), MLP (4x up + down), two norm weights."""
    d = n_embd
    return 4 * d * d + 8 * d * d + 2 * d


def init_gpt2_(model: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) for every matrix; residual projections scaled by 1/sqrt(2 n_layer).

    The scaling keeps the residual stream's variance from growing with depth (GPT-2 paper,
    nanoGPT). 1-D parameters are norm weights and keep their default of ones. nn.init works
    on meta tensors too (a no-op), so meta construction stays free.
    """
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        elif p.dim() == 2:
            nn.init.normal_(p, mean=0.0, std=0.02)


def param_counts(model: nn.Module, analytic_embedding: int, analytic_non_embedding: int) -> dict:
    """Parameters by convention: {'embedding', 'non_embedding', 'total'}, checked against a formula.

    'embedding' is every nn.Embedding (lookups cost no FLOPs: Kaplan et al. 2020 leave them out
    of N); everything else is a matmul on every token and counts. The analytic counts come from
    the model's config alone: if the architecture changes without its formula, this fails.
    """
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding)
                    for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    counts = {"embedding": embedding, "non_embedding": total - embedding, "total": total}
    analytic = {"embedding": analytic_embedding, "non_embedding": analytic_non_embedding,
                "total": analytic_embedding + analytic_non_embedding}
    assert counts == analytic, f"parameter count {counts} != analytic formula {analytic}"
    return counts


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = nn.Embedding(config.seq_len, config.n_embd)  # learned position embedding
        self.blocks = nn.ModuleList(Block(config.n_embd, config.n_head, causal=True)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=False)
        # untied from wte (nanochat): the embedding / non-embedding split stays clean
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        init_gpt2_(self, config.n_layer)

    @classmethod
    def from_size(
        cls,
        size: int,
        *,
        aspect: int = 16,  # n_embd per layer; nanochat uses 64, 16 keeps CPU sweeps cheap
        head_dim: int = 16,  # channels per attention head
        vocab_size: int = 256,
        seq_len: int = 128,
    ) -> "GPT":
        """One size dial: n_layer = size, n_embd = aspect * size, n_head = n_embd // head_dim."""
        n_layer, n_head, n_embd = size_dial(size, aspect, head_dim)
        return cls(GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer,
                             n_head=n_head, n_embd=n_embd))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: LongTensor[B, T] of token ids -> logits: Tensor[B, T, vocab_size]."""
        B, T = idx.shape
        if T > self.config.seq_len:
            raise ValueError(
                f"sequence of {T} tokens exceeds the model's context of seq_len={self.config.seq_len}; "
                "build the model with a larger seq_len (GPT.from_size(size, seq_len=...)) "
                "or feed shorter sequences (the data's seq_len)"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def param_counts(self) -> dict:
        """Parameters by convention: {'embedding', 'non_embedding', 'total'}.

        'embedding' is every nn.Embedding (wte + wpe), 'non_embedding' everything else,
        lm_head included. Kaplan et al. (2020) exclude embedding matrices from N because
        lookups cost no FLOPs; the output projection is a real matmul on every token, so
        it is counted as nanochat does (its FLOPs estimate includes lm_head).
        """
        c = self.config
        d, V = c.n_embd, c.vocab_size
        return param_counts(
            self,
            analytic_embedding=V * d + c.seq_len * d,  # wte + wpe
            analytic_non_embedding=c.n_layer * block_params(d) + d + d * V,  # blocks, final norm, lm_head
        )


def gpt(size: int) -> GPT:
    """Default model_fn: GPT.from_size(size) with aspect 16, head_dim 16, bytes, 128 context.

    Module-level so it pickles to Ray workers. For another family pass e.g.
    functools.partial(GPT.from_size, aspect=64) (nanochat's width per layer).
    """
    return GPT.from_size(size)


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats per token over all B*T positions.

    batch: LongTensor[B, T+1]; inputs are batch[:, :-1], targets batch[:, 1:].
    model may be wrapped (DDP, accelerate): it is only called.
    """
    logits = model(batch[:, :-1])
    # float32 for the softmax even under bf16 autocast: the loss is the measured result
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
