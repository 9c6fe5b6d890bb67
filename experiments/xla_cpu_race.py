"""Reproduce the XLA CPU fault behind layout.batch_layout's one-device rule (docs/real-models.md).

    python -m experiments.xla_cpu_race            # ~20 s on 2 cores

Two copies of ONE single-device program (a 30-layer decoder of SmolLM2-135M's shapes, random
weights: prefill 40 slots, then 4 greedy decode steps in a lax.scan with a key/value cache) run on
two CPU devices of one process. Run one after the other, each gives the numbers it gives alone;
dispatched together, so that the two devices execute at once, their hidden states come out wrong
(max |diff| 3.5 with these random weights; 23-26 with SmolLM2's own, varying between tries: a race). No sharding is involved: two plain jits on
two devices. It needs XLA's YNNPACK fusions off (`--xla_cpu_experimental_ynn_fusion_type=`, which
sim sets: sim/runtime.py, for a different fault of those fusions); with XLA's default flags the
two agree. jax/jaxlib 0.10.2, found 2026-12-08 on a 2-core AMD EPYC (AVX-512). The same happened
under shard_map, pmap and GSPMD (one program over both devices). On SmolLM2's own weights the
sampled tokens diverge; 2 or 16 layers, or 1 or 2 decode steps, did not show it.

Prints the largest difference of each way of running from the reference (the first device, alone);
exits 1 if the concurrent runs differ.
"""
from __future__ import annotations

import sys
from dataclasses import replace

from sim import runtime  # noqa: E402

runtime.set_xla_flags()  # sim's flags, as every sim.run has them
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)

from sim.lm import model  # noqa: E402
from sim.lm.config import LMConfig  # noqa: E402

SMOLLM2_135M = LMConfig(family="llama", vocab=49152, d_model=576, layers=30, heads=9, kv_heads=3, head_dim=64,
                        ffn=1536, rope_theta=100000.0, norm_eps=1e-5, tied_embeddings=True)
P, T, N, STEPS = 8, 40, 16, 4


def decode(cfg: LMConfig, params: dict, ids_PxT: jax.Array) -> jax.Array:
    """Prefill, then STEPS greedy tokens; the final hidden state of each, STEPS x P x 1 x D."""
    mask_PxT = jnp.ones((P, T), bool)
    positions_PxT = model.positions_from_mask(mask_PxT)
    kv_PxS = jnp.concatenate([mask_PxT, jnp.ones((P, N), bool)], 1)
    _, cache = model.hidden_cached(params, cfg, ids_PxT, positions_PxT, kv_PxS, model.init_cache(cfg, P, T + N), 0)

    def step(carry, i):
        cache, token_Px1 = carry
        h, cache = model.hidden_cached(params, cfg, token_Px1, positions_PxT[:, -1:] + 1 + i, kv_PxS, cache, T + i)
        return (cache, jnp.argmax(model.head(params, cfg, h), -1).astype(jnp.int32)), h

    return jax.lax.scan(step, (cache, ids_PxT[:, -1:]), jnp.arange(STEPS))[1]


def main(layers: int = SMOLLM2_135M.layers) -> int:
    cfg = replace(SMOLLM2_135M, layers=layers)
    params = model.init_params(cfg, jax.random.key(0))
    ids = [jnp.asarray(np.random.default_rng(i).integers(0, 1000, (P, T)), jnp.int32) for i in range(2)]
    d0, d1 = jax.local_devices()[:2]
    run = jax.jit(lambda p, x: decode(cfg, p, x))
    on = [jax.device_put((params, ids[i]), d) for i, d in enumerate((d0, d1))]
    alone = [np.asarray(run(*on[0])), np.asarray(run(*on[1]))]  # one after the other
    worst = 0.0
    for attempt in range(3):
        together = [run(*on[0]), run(*on[1])]  # dispatched together: both devices at once
        diff = max(float(np.abs(np.asarray(t) - a).max()) for t, a in zip(together, alone))
        worst = max(worst, diff)
        print(f"{layers} layers, both devices at once, try {attempt}: max |diff| from alone = {diff:.3g}", flush=True)
    print("FAULT: concurrent execution changed the numbers" if worst else "no difference", flush=True)
    return int(worst > 0)


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
