"""Scaling laws and the parametric fit's objective: pure math, no I/O.

Units throughout: compute C in FLOPs, model size N in parameters, data D in tokens,
loss L in nats per token.

References
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla),
  arXiv:2203.15556: eq. 2 (parametric loss), eq. 4 (compute-optimal allocation),
  App. D.2 (Huber objective on log loss, log-sum-exp form).
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102:
  the objective SUMMED (not averaged) over points.
"""

from __future__ import annotations

import numpy as np

from flops_fit.flops import FLOPS_PER_PARAM_TOKEN

# Huber threshold on the log-loss residual, Hoffmann et al. 2022 App. D.2.
HUBER_DELTA = 1e-3


def training_flops(params, tokens, flops_per_param_token=FLOPS_PER_PARAM_TOKEN):
    """Training compute in FLOPs for N parameters trained on D tokens: C = k*N*D."""
    return flops_per_param_token * np.asarray(params, float) * np.asarray(tokens, float)


def parametric_loss(params, tokens, E, A, B, alpha, beta):
    """L(N, D) = E + A/N^alpha + B/D^beta in nats per token (Hoffmann et al. 2022 eq. 2)."""
    n = np.asarray(params, float)
    d = np.asarray(tokens, float)
    return E + A / n**alpha + B / d**beta


def compute_optimal_allocation(flops, A, B, alpha, beta,
                               flops_per_param_token=FLOPS_PER_PARAM_TOKEN):
    """N_opt and D_opt minimising L(N, D) subject to C = f*N*D, f = flops_per_param_token
    (Hoffmann et al. 2022 eq. 4, where f = 6).

    N_opt = G (C/f)^a, D_opt = G^-1 (C/f)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta). Returns (parameters, tokens) as float
    arrays. Taken in logs: exponents near zero put G beyond a float, and a law that gives
    no finite allocation returns inf or 0 there (callers state it), never an OverflowError.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        a, b, log_g = allocation_exponents(alpha, beta, np.log(np.asarray(A, float)), np.log(np.asarray(B, float)))
        log_c = np.log(np.asarray(flops, float) / flops_per_param_token)
        return np.exp(log_g + a * log_c), np.exp(b * log_c - log_g)


def allocation_exponents(alpha, beta, log_A, log_B):
    """(a, b, ln G) of Hoffmann et al. 2022 eq. 4: a = beta/(alpha+beta), b = alpha/(alpha+beta),
    ln G = (ln(alpha A) - ln(beta B)) / (alpha + beta), from the exponents and ln A, ln B.
    In logs, so that exponents near zero give an infinite ln G, never an OverflowError."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        alpha, beta = np.asarray(alpha, float), np.asarray(beta, float)
        s = alpha + beta
        return beta / s, alpha / s, (np.log(alpha) + log_A - np.log(beta) - log_B) / s


def huber(residual, delta=HUBER_DELTA):
    """Huber loss: quadratic for |r| <= delta, linear beyond (Huber 1964)."""
    r = np.abs(residual)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def huber_lse_objective(theta, log_n, log_d, log_loss, weights, delta=HUBER_DELTA):
    """Summed Huber objective of Hoffmann et al. 2022 App. D.2 and its analytic gradient.

    theta: (S, 5) rows (a, b, e, alpha, beta) with A, B, E = exp(a, b, e); log_n, log_d,
    log_loss: (n,) natural logs of parameters, tokens and loss; weights: (n,) or (S, n)
    per-point multiplicities (bootstrap counts). The residual is
    r = LSE(a - alpha ln N, b - beta ln D, e) - ln L, the model's log loss minus the
    observed one; the objective is sum_i w_i Huber(r_i). Returns (f (S,), grad (S, 5)).
    """
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, j : j + 1] for j in range(5))
    u1 = a - alpha * log_n
    u2 = b - beta * log_d
    u3 = np.broadcast_to(e, u1.shape)
    top = np.maximum(np.maximum(u1, u2), u3)
    e1 = np.exp(u1 - top)
    e2 = np.exp(u2 - top)
    e3 = np.exp(u3 - top)
    total = e1 + e2 + e3
    r = top + np.log(total) - log_loss
    # psi = d Huber / dr = clip(r, -delta, delta), and Huber(r) = psi (r - psi/2) exactly
    # in both branches, which saves a branch over the (S, n) array.
    psi = np.clip(r, -delta, delta)
    f = (weights * (psi * (r - 0.5 * psi))).sum(axis=1)
    # d LSE / d u_k = softmax weight e_k / total.
    wpsi = weights * psi / total
    g1 = wpsi * e1
    g2 = wpsi * e2
    grad = np.empty_like(theta)
    grad[:, 0] = g1.sum(axis=1)
    grad[:, 1] = g2.sum(axis=1)
    grad[:, 2] = (wpsi * e3).sum(axis=1)
    grad[:, 3] = -(g1 * log_n).sum(axis=1)
    grad[:, 4] = -(g2 * log_d).sum(axis=1)
    return f, grad

