"""Best-of-n sampling from the reference against a frozen proxy, exactly (pure numpy, no files).

Draw n responses to a prompt from the reference, keep the one the proxy scores highest. On the toy
every response of a prompt can be enumerated, so the kept response's distribution is exact: with
the responses grouped by proxy score (a group: one score value) and F(s) the reference's mass on
scores <= s, the best of n has a score in group s with probability F(s)^n - F(s-)^n, and given
that group it is distributed as the reference restricted to it (ties are broken by draw order,
which is independent of the response). Its gold is then an exact expectation.

Its KL to the reference: KL = log n - (n - 1)/n for a continuous score distribution (no atoms;
Stiennon et al. 2020, appendix; Gao et al. 2022 use it as the distance of best-of-n), and an upper
bound for a discrete one (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment
policy"): atoms, ties among them most of all, lower it, and it can never exceed -log of the reference
probability of the proxy's favourite response.
`best_of_n` returns both the formula and the exact KL of the tie-aware distribution.

Gao et al. fit the gold gained by best-of-n at d = sqrt(KL) with R(d) = d (alpha - beta d)
(`bon_fit`: least squares in closed form, linear in (alpha, beta) for fixed d); the fitted peak is
at d* = alpha / (2 beta).
"""
from __future__ import annotations

import numpy as np

from sim.reward_models import hacking



def kl_formula(n: np.ndarray | int) -> np.ndarray:
    """log n - (n - 1)/n: the KL of best-of-n for a continuous score (an upper bound for a discrete one)."""
    n = np.asarray(n, np.float64)
    return np.log(n) - (n - 1) / n


def best_of_n_N(ref_prob_N: np.ndarray, proxy_N: np.ndarray, n: int) -> np.ndarray:
    """The distribution of the best of n reference draws by proxy score over one prompt's responses."""
    ref_prob_N, proxy_N = np.asarray(ref_prob_N, np.float64), np.asarray(proxy_N, np.float64)
    scores_G, group_N = np.unique(proxy_N, return_inverse=True)  # groups in increasing score
    mass_G = np.bincount(group_N.reshape(-1), ref_prob_N, minlength=scores_G.size)
    below_G = np.concatenate([[0.0], np.cumsum(mass_G)[:-1]])
    win_G = np.clip(below_G + mass_G, 0.0, 1.0) ** n - below_G ** n  # P(the best of n lands in group g)
    share_N = np.divide(ref_prob_N, mass_G[group_N], out=np.zeros_like(ref_prob_N), where=mass_G[group_N] > 0)
    return win_G[group_N] * share_N


def best_of_n(ref_prob_PxN: np.ndarray, proxy_PxN: np.ndarray, gold_PxN: np.ndarray, n: int) -> dict:
    """Prompt-averaged {gold, proxy, kl_exact, kl_formula} of best-of-n from the reference."""
    golds, proxies, kls = [], [], []
    for ref_N, proxy_N, gold_N in zip(ref_prob_PxN, proxy_PxN, gold_PxN):
        pi_N = best_of_n_N(ref_N, proxy_N, n)
        golds.append(pi_N @ gold_N)
        proxies.append(pi_N @ proxy_N)
        on = pi_N > 0
        kls.append(float(np.sum(pi_N[on] * np.log(pi_N[on] / ref_N[on]))))
    return {"gold": float(np.mean(golds)), "proxy": float(np.mean(proxies)), "kl_exact": float(np.mean(kls)),
            "kl_formula": float(kl_formula(n))}


def bon_fit(d_T: np.ndarray, gain_T: np.ndarray) -> dict:
    """{alpha, beta, r2, rows, d_min, d_max, d_peak, peak_in_data}: least squares of
    gain = d (alpha - beta d) over rows with d > 0 (None values with fewer than MIN_ROWS such rows).
    d_peak = alpha / (2 beta) (None when beta <= 0: no peak); peak_in_data: within the observed d."""
    return hacking.fit_gain(d_T, gain_T, lambda d: d, lambda alpha, beta: float(alpha / (2 * beta)))


def gold_at_d(d_N: np.ndarray, gold_N: np.ndarray, d_star: float) -> float:
    """Best-of-n's gold at distance d_star, linear in d between the two n around it (d grows with n);
    nan outside the n computed."""
    d_N, gold_N = np.asarray(d_N, np.float64), np.asarray(gold_N, np.float64)
    if not d_N[0] <= d_star <= d_N[-1]:
        return float("nan")
    return float(np.interp(d_star, d_N, gold_N))
