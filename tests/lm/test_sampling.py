"""Sampling with the key/value cache against teacher-forced probabilities; greedy decoding; EOS
masking; top-k / top-p filtering."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sim.lm import model, sampling
from sim.lm.config import LMConfig

# A vocabulary of 5 so that every 2-token response (25 of them) is a cell of a chi-squared test.
SMALL_V = LMConfig(family="llama", vocab=5, d_model=24, layers=2, heads=4, kv_heads=2, head_dim=6, ffn=40,
                   rope_theta=500.0)
log_probs = jax.jit(sampling.response_log_probs, static_argnums=(1, 5))


def _chi2(counts: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic with cells of expected count < 5 pooled into one; (statistic, dof)."""
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum() - 1)


def test_sampling_frequencies_match_teacher_forced_probabilities():
    """Seeds: params key(0), sampling key(7); M = 4000 samples of each of 2 prompts (one left-padded
    by 2 slots whose pad id 0 is also a real token), 2 new tokens each. Statistic: Pearson's chi^2
    over the 25 responses of each prompt (cells expected < 5 pooled), summed over prompts; under a
    correct sampler it is chi^2(dof) distributed, and the threshold is its 0.999 quantile, so a
    correct sampler fails for 1 seed in 1000 (and this seed is fixed, so the test is
    deterministic). Power: the same counts against the probabilities of a model that ignores the
    padding mask give a statistic far above the threshold (checked below)."""
    params = model.init_params(SMALL_V, jax.random.key(0))
    prompts = np.array([[3, 1, 4, 1], [0, 0, 2, 4]])
    pmask = np.array([[True] * 4, [False, False, True, True]])
    M = 4000
    tokens = sampling.generate(params, SMALL_V, jax.random.key(7), np.repeat(prompts, M, 0), np.repeat(pmask, M, 0), 2)
    assert tokens.shape == (2 * M, 2) and tokens.dtype == jnp.int32
    cells = np.array(list(itertools.product(range(5), repeat=2)))  # 25 x 2

    def probs(mask):
        lp, _ = log_probs(params, SMALL_V, np.repeat(prompts, 25, 0), np.repeat(mask, 25, 0), np.tile(cells, (2, 1)))
        return np.exp(np.asarray(lp, np.float64).sum(-1)).reshape(2, 25)

    p = probs(pmask)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    code = np.asarray(tokens[:, 0] * 5 + tokens[:, 1]).reshape(2, M)
    counts = np.stack([np.bincount(c, minlength=25) for c in code])
    total, dof = map(sum, zip(*(_chi2(counts[i], M * p[i]) for i in range(2))))
    threshold = stats.chi2.ppf(0.999, dof)
    print(f"chi2 {total:.1f} on {dof} dof, threshold {threshold:.1f}")
    assert total < threshold, (total, dof)
    wrong, _ = map(sum, zip(*(_chi2(counts[i], M * q) for i, q in enumerate(probs(np.ones_like(pmask))))))
    print(f"chi2 against a model attending to padding: {wrong:.1f}")
    assert wrong > 3 * threshold, wrong  # the test can tell a sampler that attends to padding


def test_greedy_tokens_are_the_argmax_of_their_teacher_forced_logits():
    cfg = LMConfig(**{**SMALL_V.to_dict(), "vocab": 37})
    params = model.init_params(cfg, jax.random.key(0))
    prompts = np.array([[5, 9, 11, 2], [2, 2, 30, 7]])  # row 1: pad id 2 (= a real token) on 2 slots
    pmask = np.array([[True] * 4, [False, False, True, True]])
    tokens = sampling.generate(params, cfg, jax.random.key(1), prompts, pmask, 6, temperature=0.0)
    _, logits = log_probs(params, cfg, prompts, pmask, tokens, False)
    np.testing.assert_array_equal(np.argmax(logits, -1), tokens)
    top1 = sampling.generate(params, cfg, jax.random.key(1), prompts, pmask, 6, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, tokens)  # top-k = 1 at any temperature is greedy
    assert len(np.unique(tokens)) > 2  # not a constant sequence


def test_response_mask_keeps_tokens_up_to_and_including_the_first_eos():
    tokens = jnp.array([[5, 2, 7, 2], [2, 3, 3, 3], [4, 4, 4, 4], [1, 1, 1, 2]])
    expected = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(sampling.response_mask(tokens, 2), expected)
    assert sampling.response_mask(tokens, None).all()


def test_a_pad_id_equal_to_eos_does_not_change_log_probs():
    params = model.init_params(SMALL_V, jax.random.key(0))
    pmask = np.array([[False, False, True, True]])
    tokens = np.array([[3, 1, 2]])
    a, _ = log_probs(params, SMALL_V, np.array([[2, 2, 1, 4]]), pmask, tokens, False)  # pad = EOS = 2
    b, _ = log_probs(params, SMALL_V, np.array([[0, 3, 1, 4]]), pmask, tokens, False)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_top_k_and_top_p_keep_the_most_probable_tokens():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(logits, **kw)))[0]  # noqa: E731
    np.testing.assert_array_equal(kept(top_k=2), [False, True, False, True])
    np.testing.assert_array_equal(kept(top_p=0.7), [False, True, False, True])  # 0.5 < 0.7 <= 0.8
    np.testing.assert_array_equal(kept(top_p=0.5), [False, True, False, False])
    np.testing.assert_array_equal(kept(top_p=0.85), [False, True, True, True])
    np.testing.assert_array_equal(kept(), [True] * 4)


def test_smollm2_greedy_continuation_of_the_capital_of_france_is_paris(smollm2):
    cfg, params, tok = smollm2
    prompt = np.array([tok.encode("The capital of France is")])
    tokens = sampling.generate(params, cfg, jax.random.key(0), prompt, np.ones_like(prompt, bool), 2, temperature=0.0)
    assert tok.decode(tokens[0]).startswith(" Paris"), tok.decode(tokens[0])


# ---------------------------------------------------------------- a group's prompt computed once
GROUPED_CFG = LMConfig(family="llama", vocab=29, d_model=24, layers=2, heads=4, kv_heads=2, head_dim=6, ffn=40,
                       rope_theta=500.0, attn_bias=True)


def _adapters(cfg: LMConfig, key, rank: int = 3) -> dict:
    """Random LoRA adapters (A and B both non-zero, so they matter) on every dense matrix."""
    shapes = {"wq": (cfg.d_model, cfg.heads * cfg.head_dim), "wk": (cfg.d_model, cfg.kv_heads * cfg.head_dim),
              "wv": (cfg.d_model, cfg.kv_heads * cfg.head_dim), "wo": (cfg.heads * cfg.head_dim, cfg.d_model),
              "w_gate": (cfg.d_model, cfg.ffn), "w_up": (cfg.d_model, cfg.ffn), "w_down": (cfg.ffn, cfg.d_model)}
    keys = iter(jax.random.split(key, 2 * len(shapes)))
    return {name: {"a": 0.3 * jax.random.normal(next(keys), (cfg.layers, i, rank)),
                   "b": 0.3 * jax.random.normal(next(keys), (cfg.layers, rank, o))} for name, (i, o) in shapes.items()}


@pytest.mark.parametrize("group", [1, 2, 4])
def test_shared_prompt_log_probs_and_gradients_equal_the_unshared_computation(group):
    """Each prompt computed once, its G responses attending to its keys and values, gives the
    log-probs, and the gradients (of the base weights and of LoRA adapters), of the whole
    [prompt; response] sequences computed one by one: left-padded prompts of 3 lengths, G = 1, 2, 4."""
    cfg = GROUPED_CFG
    params = model.init_params(cfg, jax.random.key(0))
    params = params | {"blocks": params["blocks"] | {"lora": _adapters(cfg, jax.random.key(1))}}
    prompts = np.array([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10], [0, 0, 0, 0, 11]], np.int32)
    pmask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (3 * group, 6), 0, cfg.vocab), np.int32)
    weight = np.asarray(jax.random.normal(jax.random.key(3), tokens.shape))

    def loss(p, grouped):
        if grouped:
            logp, _ = sampling.group_log_probs(p, cfg, prompts, pmask, tokens, lora_scale=0.7)
        else:
            logp, _ = sampling.response_log_probs(p, cfg, np.repeat(prompts, group, 0), np.repeat(pmask, group, 0),
                                                  tokens, lora_scale=0.7)
        return jnp.sum(weight * logp), logp

    (l1, logp1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
    (l0, logp0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
    np.testing.assert_allclose(logp1, logp0, rtol=1e-5, atol=1e-5)
    for path, a in jax.tree_util.tree_flatten_with_path(g1)[0]:
        b = dict(jax.tree_util.tree_flatten_with_path(g0)[0])[path]
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0, path  # every weight gets a gradient: the comparison has teeth
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * max(scale, 1.0), jax.tree_util.keystr(path)


def test_generate_with_a_shared_prefill_draws_the_tokens_of_repeated_prompts():
    """A prompt prefilled once and its cache repeated G times samples the same tokens as the prompt
    repeated G times (same key): the cache holds the same keys and values."""
    cfg = GROUPED_CFG
    params = model.init_params(cfg, jax.random.key(0))
    prompts = np.array([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10]], np.int32)
    pmask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
    key = jax.random.key(5)
    shared = sampling.generate(params, cfg, key, prompts, pmask, 8, per_prompt=3)
    repeated = sampling.generate(params, cfg, key, np.repeat(prompts, 3, 0), np.repeat(pmask, 3, 0), 8)
    assert shared.shape == (6, 8)
    np.testing.assert_array_equal(shared, repeated)
    assert len({tuple(r) for r in np.asarray(shared)}) > 2  # the group's responses differ
