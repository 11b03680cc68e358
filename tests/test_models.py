"""The example GPT (flops_fit/models.py): parameter counts against the meta device and known
values, the size dial, shapes, pickling for Ray, and the loss at initialisation."""

import functools
import math
import pickle

import pytest
import torch

from flops_fit.models import GPT, GPTConfig, gpt, lm_loss


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_param_counts_consistent_and_match_meta(size):
    real = gpt(size)
    with torch.device("meta"):
        meta = gpt(size)
    assert next(meta.parameters()).is_meta
    counts = real.param_counts()  # also runs the analytic-formula assert
    assert counts == meta.param_counts()
    assert counts["embedding"] + counts["non_embedding"] == sum(p.numel() for p in real.parameters())
    d = 16 * size
    assert counts["embedding"] == (256 + 128) * d  # wte + wpe, nothing else
    # lm_head (d * vocab) sits in non_embedding
    assert counts["non_embedding"] == size * (12 * d * d + 2 * d) + d + d * 256


def test_known_counts_for_default_family():
    # hand-computed: size 4 -> d = 64, 4 layers of 12*64^2 + 2*64, final norm 64, lm_head 64*256
    assert gpt(4).param_counts()["non_embedding"] == 4 * (12 * 64**2 + 128) + 64 + 64 * 256 == 213_568


def test_from_size_shape_and_monotone_growth():
    m = GPT.from_size(3, aspect=64, head_dim=32, seq_len=64)
    assert (m.config.n_layer, m.config.n_embd, m.config.n_head, m.config.seq_len) == (3, 192, 6, 64)
    with torch.device("meta"):
        n = [gpt(s).param_counts()["non_embedding"] for s in range(1, 11)]
    assert all(a < b for a, b in zip(n, n[1:]))
    # cubic growth: log spacing shrinks with size (fine resolution where budgets are large)
    ratios = [b / a for a, b in zip(n, n[1:])]
    assert all(r1 > r2 for r1, r2 in zip(ratios, ratios[1:]))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_from_size_rejects_bad_size(bad):
    with pytest.raises(ValueError, match=r"model_fn\(size=.*\) must be an int >= 1: it is the number of layers"):
        GPT.from_size(bad)


def test_from_size_rejects_indivisible_width():
    with pytest.raises(ValueError, match="head_dim"):
        GPT.from_size(1, aspect=24, head_dim=16)


def test_forward_shapes_and_context_error():
    m = gpt(2)
    idx = torch.randint(0, 256, (3, 17))
    assert m(idx).shape == (3, 17, 256)
    with pytest.raises(ValueError, match=r"exceeds the model's context of seq_len=128.*larger seq_len"):
        m(torch.zeros(1, 129, dtype=torch.long))


def test_factories_pickle():
    assert pickle.loads(pickle.dumps(gpt))(1).config.n_embd == 16
    wide = pickle.loads(pickle.dumps(functools.partial(GPT.from_size, aspect=64)))
    assert wide(1).config.n_embd == 64


def test_loss_at_init_is_uniform_and_decreases():
    torch.manual_seed(0)
    m = gpt(2)
    batch = torch.randint(0, 256, (8, 33))
    loss0 = lm_loss(m, batch)
    assert loss0.dim() == 0
    # At init the logits are ~N(0, s^2) with s = 0.02 * sqrt(n_embd) ~ 0.11 (lm_head std 0.02 on a
    # unit-variance normed input), so the loss exceeds ln(256) by about s^2 / 2 ~ 0.006;
    # 0.05 allows for sampling noise over 256 positions.
    assert abs(loss0.item() - math.log(256)) < 0.05
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(20):
        loss = lm_loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lm_loss(m, batch).item() < loss0.item() - 1.0  # memorising one batch is easy


def test_lm_loss_is_mean_next_token_cross_entropy():
    m = gpt(1)
    batch = torch.randint(0, 256, (2, 9))
    logits = m(batch[:, :-1])
    manual = -torch.log_softmax(logits, -1).gather(-1, batch[:, 1:, None]).mean()
    assert torch.allclose(lm_loss(m, batch), manual, atol=1e-5)


def test_config_defaults_build():
    m = GPT(GPTConfig())
    assert m.param_counts()["total"] == sum(p.numel() for p in m.parameters())
