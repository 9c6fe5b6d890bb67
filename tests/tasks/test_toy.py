import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim.tasks import toy as T

SPEC_A = T.RewardSpec(positions=(0, 1), good_tokens=(0, 1), shape="mean")
SPEC_B = T.RewardSpec(positions=(2, 3), good_tokens=(2,), shape="all")
TASK = T.Task(prompts=3, length=4, vocab=5, phi=SPEC_A, phi_prime=SPEC_B)


def test_rewards_on_hand_built_sequences():
    tokens = jnp.array([
        [0, 1, 2, 2],  # phi: both good -> 1; phi_prime: all good -> 1
        [0, 4, 2, 3],  # phi: half -> 0.5; phi_prime: one bad -> 0
        [3, 4, 0, 1],  # phi: 0; phi_prime: 0 (good tokens of phi do not count for phi_prime)
        [2, 2, 2, 2],  # phi: 0 (token 2 is phi_prime's); phi_prime: 1
    ])
    phi, phi_prime = T.rewards_B(TASK, tokens)
    np.testing.assert_array_equal(phi, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(phi_prime, [1.0, 0.0, 0.0, 1.0])


def test_reference_puts_competence_on_good_tokens():
    logp = T.reference_logits_PxLxV(TASK, (jnp.float32(0.3), jnp.float32(0.8)), jnp.float32(0.0))
    probs = np.exp(np.asarray(logp))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[:, 0, [0, 1]].sum(-1), 0.3, rtol=1e-5)
    np.testing.assert_allclose(probs[:, 3, 2], 0.8, rtol=1e-5)
    np.testing.assert_allclose(probs[:, 0, 2:], 0.7 / 3, rtol=1e-5)  # bad tokens share the rest evenly


def test_spill_counts_phi_good_tokens_at_phi_prime_positions():
    # TASK: phi's good tokens {0, 1}; phi_prime's positions 2, 3 with good token {2}. At the
    # reference (c' = 0.8) the 4 bad tokens share 0.2 evenly, so {0, 1} hold 2 * 0.05 = 0.1.
    logp = T.reference_logits_PxLxV(TASK, (jnp.float32(0.3), jnp.float32(0.8)), jnp.float32(0.0))
    np.testing.assert_allclose(T.spill_P(TASK, logp), 0.1, rtol=1e-5)
    # position 2 certain of token 0, position 3 of token 3: one of two positions spilled
    hand = jnp.full((3, 4, 5), -30.0).at[:, 2, 0].set(0.0).at[:, 3, 3].set(0.0)
    np.testing.assert_allclose(T.spill_P(TASK, hand), 0.5, atol=1e-6)


def test_competence_spread_varies_prompts_around_the_competence():
    wide = T.Task(prompts=2000, length=4, vocab=5, phi=SPEC_A, phi_prime=SPEC_B)
    c = np.asarray(T.prompt_competence_P(wide, jnp.float32(0.5), jnp.float32(1.0), 0))
    assert c.std() > 0.1 and abs(np.median(c) - 0.5) < 0.03  # symmetric in logit space around 0.5
    flat = T.prompt_competence_P(wide, jnp.float32(0.5), jnp.float32(0.0), 0)
    np.testing.assert_allclose(flat, 0.5)


def test_reference_stays_finite_when_the_spread_saturates_the_competence():
    """A spread of 50 pushes some prompts' competence to 0 or 1 in float32; log c and log(1 - c)
    must still be finite (they come from the logit), and rows still sum to 1."""
    logp = np.asarray(T.reference_logits_PxLxV(TASK, (jnp.float32(0.2), jnp.float32(0.9)), jnp.float32(50.0)))
    c = np.asarray(T.prompt_competence_P(TASK, jnp.float32(0.2), jnp.float32(50.0), 0))
    assert np.any((c == 0) | (c == 1))  # saturated in float32 (z_p ~ N(0, 1), 3 prompts: |50 z| > 17)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", ["mean", "all", "parity"])
def test_exact_expectation_matches_monte_carlo(shape):
    task = T.Task(prompts=3, length=4, vocab=5, phi=SPEC_A,
                  phi_prime=T.RewardSpec((2, 3), (2, 4), shape))
    logits = jax.random.normal(jax.random.key(1), (3, 4, 5))
    exact = np.asarray(T.expected_rewards_P(task, logits))
    n = 200_000
    prompts = jnp.repeat(jnp.arange(3), n)
    tokens = jax.random.categorical(jax.random.key(2), logits[prompts])
    sampled = np.stack([np.asarray(r).reshape(3, n).mean(1) for r in T.rewards_B(task, tokens)])
    # Each estimate is a mean of n values in [0, 1]: its std is at most 0.5/sqrt(n) ~ 0.0011;
    # 0.006 is over 5 standard errors, so this fails only if the formula is wrong.
    np.testing.assert_allclose(sampled, exact, atol=0.006)


def test_a_text_reward_in_jitted_code_is_its_function_of_the_decoded_tokens_at_its_positions(tmp_path):
    """RewardSpec.score bound by text_rewards.scorer to a checkpoint's tokenizer: inside jit, each
    response's value is the registered function called on the decoded tokens at the reward's
    positions, up to the response's end (mask), as the training step computes it."""
    from sim.tasks import text_rewards
    from sim.lm import tokenizer as tokenizer_lib
    from tests.lm.tiny import write_tiny

    ckpt = str(write_tiny(tmp_path)["hf_dir"])
    tok = tokenizer_lib.load(ckpt)
    spec = T.RewardSpec(positions=(2, 3, 4, 5), good_tokens=(), shape="all", text="no_digits",
                        score=text_rewards.scorer("no_digits", tok, (2, 3, 4, 5)))
    task = T.Task(prompts=1, length=6, vocab=tok.vocab_size, phi=SPEC_A, phi_prime=spec)
    digits = [i for i in range(tok.vocab_size) if any(c.isdigit() for c in tok.decode([i]))]
    plain = [i for i in range(3, tok.vocab_size) if not any(c.isdigit() for c in tok.decode([i]))]
    assert digits and plain
    rng = np.random.default_rng(0)
    tokens = rng.choice(plain, (64, 6))
    tokens[::3, rng.integers(2, 6)] = digits[0]  # a digit inside the window in every third response
    tokens[1::3, 0] = digits[0]  # a digit outside it
    mask = np.ones((64, 6), bool)
    mask[::6, 4:] = False  # ended before token 4: a digit after it does not count
    got = jax.jit(lambda t, m: T.rewards_B(task, t, m)[1])(jnp.asarray(tokens), jnp.asarray(mask))
    want = [float(not any(c.isdigit() for c in tok.decode([int(t) for t, m in zip(row[2:], keep[2:]) if m])))
            for row, keep in zip(tokens, mask)]
    np.testing.assert_array_equal(np.asarray(got), want)
    assert 0 < np.mean(want) < 1
    np.testing.assert_array_equal(np.asarray(got), text_rewards.host_values(
        text_rewards.REGISTRY["no_digits"], tok, tokens[:, 2:], mask[:, 2:]))


def test_the_toy_task_imports_nothing_of_text_or_real_models():
    """A text task hands the toy its text rewards as RewardSpec.score: sim.tasks.toy imports no
    tokenizer, text reward or sim.lm module (checked in a fresh interpreter)."""
    code = ("import sys, sim.tasks.toy; bad = [m for m in sys.modules if m.startswith(('sim.lm', 'sim.tasks.text',"
            " 'tokenizers'))]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)



def test_parity_is_one_for_an_odd_number_of_good_tokens():
    spec = T.RewardSpec(positions=(0, 1, 2), good_tokens=(1,), shape="parity")
    np.testing.assert_array_equal(T.reward_of_count_J(spec), [0.0, 1.0, 0.0, 1.0])  # 0..3 good tokens
    tokens = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(T.reward_B(spec, 3, tokens), [0.0, 1.0, 0.0, 1.0])
