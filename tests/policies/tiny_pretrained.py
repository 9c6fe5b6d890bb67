"""The tiny checkpoint the policy=pretrained tests share (tests/policies/test_pretrained*.py,
test_estimates.py): a random Llama (sim/lm/model.py's init_params), 3 prompts of unequal length
left-padded, responses of 6 tokens over a vocabulary of 32 with EOS = 2; static settings and
hyperparameters of a run on it."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sim.config import Static
from sim.lm import model
from sim.lm.config import LMConfig
from sim.policies import pretrained
from sim.tasks.toy import RewardSpec, Task
from sim.rl.train import build_policy

CFG = LMConfig(family="llama", vocab=32, d_model=16, layers=2, heads=2, kv_heads=1, head_dim=8, ffn=32,
               tied_embeddings=True, bos_id=1, eos_id=2, pad_id=2)
EOS = 2
PROMPTS = [[1, 5, 6], [1, 8, 9, 10, 11], [1, 12]]  # real tokens; the batch left-pads them with PAD = EOS
L = 6
TASK = Task(prompts=3, length=L, vocab=32, phi=RewardSpec((0, 1, 2), tuple(range(3, 12))),
            phi_prime=RewardSpec((3, 4, 5), tuple(range(12, 24))))
HP = dict(w_phi=4.0, w_phi_prime=1.0, competence_phi=0.2, competence_phi_prime=0.9, competence_spread=0.0,
          overlap=0.0, beta=0.1, eps_low=0.2, eps_high=0.2, entropy_coef=0.0, lr=1e-2, max_grad_norm=1.0,
          kappa_phi_target=float("nan"), kappa_phi_prime_target=float("nan"), kappa_delta=0.05)


def _frozen(params) -> pretrained.Frozen:
    T = max(map(len, PROMPTS))
    ids = np.full((len(PROMPTS), T), EOS, np.int32)
    mask = np.zeros((len(PROMPTS), T), bool)
    for p, row in enumerate(PROMPTS):
        ids[p, T - len(row):], mask[p, T - len(row):] = row, True
    return pretrained.Frozen(params, jnp.asarray(ids), jnp.asarray(mask))



def _static(**kw) -> Static:
    settings = pretrained.Settings("tiny", model=CFG, eos_id=EOS, temperature=kw.pop("temperature", 1.0))
    base = dict(task=TASK, policy="pretrained", width=0, advantage="grpo", group_size=4, std_eps=1e-4,
                kl_estimator="k3", kl_placement="loss", optimizer="adam", steps=2, log_every=1, eval_samples=2,
                entropy_bonus=False, lm=settings)
    return Static(**(base | kw))


def _policy(static: Static, frozen):
    return build_policy(static, {k: jnp.float32(v) for k, v in HP.items()}, jax.random.key(0), frozen)


def _unpadded_log_probs(params, prompt: list[int], response: np.ndarray, temperature: float) -> np.ndarray:
    """The referee: one sequence, no padding, positions 0.., through model.forward alone."""
    ids = jnp.asarray([prompt + response.tolist()], jnp.int32)
    T = len(prompt)
    logits = model.forward(params, CFG, ids, jnp.arange(ids.shape[1])[None], jnp.ones(ids.shape, bool))[0]
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64)[T - 1:T - 1 + len(response)] / temperature)
    return logp[np.arange(len(response)), response]


def _lora(static: Static, rank: int = 2, runs_per_block: int = 8, split: str = "none", **kw) -> Static:
    return dataclasses.replace(static, lm=dataclasses.replace(static.lm, adapter="lora", lora_rank=rank, lora_split=split,
                                                              lora_alpha=2.0 * rank, runs_per_block=runs_per_block, **kw))


def _hp_R(n: int) -> dict:
    return {k: np.full(n, v, np.float32) for k, v in HP.items()}
