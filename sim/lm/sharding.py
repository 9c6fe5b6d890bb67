"""Sharding rules for the model's parameter layout (config.py), kept beside the model.

A mesh has three named axes:
  data  the batch is split over it; parameters are replicated along it
  fsdp  the batch is split over it too, and every matrix is split along its model-width axis D
        (ZeRO-3 / FSDP: XLA gathers a layer's weights where it uses them)
  tp    tensor parallel: attention split by heads (q/k/v columns, wo rows), the MLP by its
        hidden units (w_gate/w_up columns, w_down rows), embedding and head by vocabulary
The optimizer state is sharded like the parameters it mirrors. One process per host; JAX's own
multi-process runtime joins the hosts (`initialize_distributed`) and the mesh spans all their devices.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sim.config_values import ConfigError
from sim.lm.config import LMConfig

AXES = ("data", "fsdp", "tp")
BATCH = P(("data", "fsdp"))  # the leading (batch) axis of every input


def make_mesh(data: int = 1, fsdp: int = 1, tp: int = 1, devices=None) -> Mesh:
    """A data x fsdp x tp mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if data * fsdp * tp != len(devices):
        raise ConfigError(f"runtime.mesh data={data} x fsdp={fsdp} x tp={tp} = {data * fsdp * tp}: must equal "
                          f"the number of devices, {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, fsdp, tp), AXES)


# name -> its PartitionSpec; blocks' leaves carry the leading layer axis N (never sharded: scanned)
_RULES = {
    "embed": P("tp", "fsdp"),                       # V x D
    "lm_head": P("fsdp", "tp"),                     # D x V
    "final_norm": P(),
    "attn_norm": P(), "mlp_norm": P(),              # N x D: small, replicated
    "wq": P(None, "fsdp", "tp"), "wk": P(None, "fsdp", "tp"), "wv": P(None, "fsdp", "tp"),
    "wo": P(None, "tp", "fsdp"),
    "bq": P(None, "tp"), "bk": P(None, "tp"), "bv": P(None, "tp"),
    "w_gate": P(None, "fsdp", "tp"), "w_up": P(None, "fsdp", "tp"), "w_down": P(None, "tp", "fsdp"),
}


def check_divides(cfg: LMConfig, mesh: Mesh) -> None:
    """One line naming the degree and what it does not divide. tp splits whole heads (and whole
    key/value heads, so each query head's key/value head is on its device)."""
    fsdp, tp = mesh.shape["fsdp"], mesh.shape["tp"]
    for degree, axis, what, size in (
            (fsdp, "fsdp", "d_model", cfg.d_model), (tp, "tp", "heads", cfg.heads),
            (tp, "tp", "kv_heads", cfg.kv_heads), (tp, "tp", "ffn", cfg.ffn), (tp, "tp", "vocab", cfg.vocab)):
        if size % degree:
            raise ConfigError(f"runtime.mesh.{axis}={degree}: must divide the model's {what}={size}")


def param_specs(cfg: LMConfig, params: dict, mesh: Mesh) -> dict:
    """PartitionSpecs in the parameters' own pytree shape."""
    check_divides(cfg, mesh)
    return {name: ({k: _RULES[k] for k in leaf} if name == "blocks" else _RULES[name]) for name, leaf in params.items()}


def param_shardings(cfg: LMConfig, params: dict, mesh: Mesh) -> dict:
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(cfg, params, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def like_params(tree, params: dict, shardings: dict, mesh: Mesh):
    """Shardings for a pytree that holds copies of the parameters' structure (an optax state: adam's
    mu and nu): those subtrees as the parameters, every other leaf (step counts) replicated."""
    structure = jax.tree.structure(params)
    return jax.tree.map(lambda sub: shardings if jax.tree.structure(sub) == structure else NamedSharding(mesh, P()),
                        tree, is_leaf=lambda sub: jax.tree.structure(sub) == structure)


def batch_sharding(mesh: Mesh, batch: int) -> NamedSharding:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % n:
        raise ConfigError(f"runtime.mesh data x fsdp = {n}: must divide the batch of {batch} prompts")
    return NamedSharding(mesh, BATCH)


def put(tree, shardings):
    """Place host values (identical on every process) onto their shardings; across processes each
    process supplies the slices its own devices hold (no communication)."""
    def one(x, s):
        x = np.asarray(x) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        return jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx])
    return jax.tree.map(one, tree, shardings)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join JAX's multi-process runtime: one process per host, before any computation. With no
    arguments JAX reads them from the launcher's environment (SLURM, Open MPI, TPU/Cloud); on
    CPUs the collectives go through gloo."""
    before = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except Exception:
        jax.config.update("jax_cpu_collectives_implementation", before)  # not joined: as it was
        raise


def sharded_fraction(x: jax.Array) -> float:
    """The fraction of an array one device holds (1.0: replicated): tests and logs show sharding."""
    return math.prod(x.sharding.shard_shape(x.shape)) / max(1, math.prod(x.shape))
