"""Multi-process smoke run: sharded GRPO steps, an orbax save by every process, restore, compare.

Two processes on one machine, two fake CPU devices each, one 4-device global mesh:

    for i in 0 1; do
      XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
        python -m s2d_jax.tools.multihost_smoke --coordinator 127.0.0.1:12355 \\
          --num_processes 2 --process_id $i --workdir /tmp/smoke &
    done; wait; cat /tmp/smoke/result.json

It exercises what a pod slice does: `jax.distributed.initialize`, each process copying in only its
own devices' rows of the batch (`placement.put_rows`), frozen-model scoring gathered to every
process (`placement.to_host`) and the pipeline's GRPO update (`placement.init_state` +
`placement.jit_update`) over the global mesh, an orbax checkpoint written and read back by all
processes together (`checkpoints.py`), and process 0 alone writing the result.
`tests/test_multihost.py` runs it and compares the losses with the same `run` on 4 devices of a
single process. `--quick` swaps the GRPO step (whose compile takes ~30 s on two busy CPU cores) for
a plain optax SGD step of a linear softmax model: the same distributed plumbing (rows put on the
mesh, sharded jit, orbax save/restore), compiled in ~1 s.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.learn import steps
from s2d_jax.model import decoder
from s2d_jax.tools import fixed_records
from s2d_jax.workflow import checkpoints

MESH = sh.MeshConfig(data=1, fsdp=2, tensor=2)
ROWS, LENGTH = 8, 16  # global batch [B, T]


def toy_config() -> decoder.ModelConfig:
    return decoder.ModelConfig.preset("toy_tiny")


def _global_rows(cfg: decoder.ModelConfig, step: int) -> dict[str, np.ndarray]:
    """The whole batch of `step` as host arrays (a function of the step only, like the pipeline's)."""
    rng = np.random.default_rng(step)
    tokens = rng.integers(0, cfg.vocab_size, (ROWS, LENGTH)).astype(np.int32)
    mask = np.ones((ROWS, LENGTH), bool)
    mask[::2, :3] = False  # left padding on every other row
    return {
        "tokens": tokens,
        "attention_mask": mask,
        "loss_mask": (mask[:, 1:] & mask[:, :-1]).astype(np.float32),
        "advantages": rng.standard_normal(ROWS).astype(np.float32),
    }


def _tree_equal(a, b) -> bool:
    """All leaves bit-equal, in one jit (a replicated scalar that every process can read).

    One program for the whole tree: per-leaf eager ops on arrays spanning processes each need
    their own compile and collective, and stalled the two-process run.
    """

    def leaf_equal(x, y):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        return jnp.all(x == y)

    def equal(a, b):
        return jnp.all(jnp.stack(jax.tree.leaves(jax.tree.map(leaf_equal, a, b))))

    return bool(jax.jit(equal)(a, b))


GRPO = fixed_records.grpo_config(0.0)


def _grpo(mesh: jax.sharding.Mesh):
    """(state, step function) for GRPO updates of the toy model, placed as the pipeline places them.

    The step function takes a host batch: the rollout policy's log-probs are scored on the mesh
    and gathered back, as a GRPO stage's batch maker does, then `placement.jit_update` puts the
    rows on the mesh.
    """
    cfg = toy_config()
    opt = fixed_records.optimizer_config(1e-2, weight_decay=0.0)
    init = functools.partial(decoder.init_params, cfg, std=0.1)
    params = jax.jit(init, out_shardings=sh.param_shardings(mesh, cfg))(jax.random.key(0))
    state = placement.init_state(mesh, cfg, opt, params)
    step_cfg = steps.StepConfig("grpo", opt, 1, chunk_size=8, vocab_chunk=0, grpo=GRPO)
    update = placement.jit_update(mesh, step_cfg, cfg, state)

    def step_fn(state, batch):
        tokens, mask = placement.put_rows(mesh, (batch["tokens"], batch["attention_mask"]))
        old_logprobs = steps.score_tokens(cfg, state.params, tokens, mask, chunk_size=8)
        state, metrics = update(state, batch | {"old_logprobs": placement.to_host(old_logprobs)})
        return state, metrics["train/loss"]

    return state, step_fn


def _quick(mesh: jax.sharding.Mesh):
    """The same plumbing around a plain optax SGD step of a linear softmax model (compiles in ~1 s).

    The embedding [V, D] and readout [D, V] are sharded like the model's embed / lm_head.
    """
    cfg = toy_config()
    rng = np.random.default_rng(0)
    params = {
        "embed": rng.normal(0, 0.5, (cfg.vocab_size, cfg.d_model)).astype(np.float32),
        "readout": rng.normal(0, 0.5, (cfg.d_model, cfg.vocab_size)).astype(np.float32),
    }
    axes = {"embed": ("vocab", "embed"), "readout": ("embed", "vocab")}
    p_shardings = {
        k: NamedSharding(mesh, sh.logical_to_spec(mesh, axes[k], sh.TRAIN_RULES, v.shape))
        for k, v in params.items()
    }
    optimizer = optax.sgd(0.5)
    state = {"params": params, "opt_state": optimizer.init(params), "step": np.int32(0)}
    abstract = jax.eval_shape(lambda s: s, state)
    state_shardings = sh.shardings_like_params(abstract, abstract["params"], p_shardings)
    state = jax.device_put(state, state_shardings)

    def loss_fn(params, batch):
        """Next-token cross-entropy of a bigram model, tokens [B, T]."""
        logits_BTV = params["embed"][batch["tokens"][:, :-1]] @ params["readout"]
        logp = jax.nn.log_softmax(logits_BTV, axis=-1)
        target = jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], -1)[..., 0]
        return -(target * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

    def update(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    jitted = jax.jit(
        update,
        in_shardings=(state_shardings, sh.rows_sharding(mesh, ROWS)),
        out_shardings=(state_shardings, sh.replicated(mesh)),
        donate_argnums=0,
    )
    return state, lambda state, batch: jitted(state, placement.put_rows(mesh, batch))


def run(workdir: Path, mesh: jax.sharding.Mesh, steps: int = 3, quick: bool = False) -> dict:
    """`steps` updates on `mesh`, save, restore, compare. Returns the figures (all processes)."""
    state, step_fn = (_quick if quick else _grpo)(mesh)
    cfg = toy_config()
    losses = []
    for step in range(steps):
        state, loss = step_fn(state, _global_rows(cfg, step))
        losses.append(float(loss))  # a replicated scalar: readable on every process

    manager = checkpoints.state_manager(Path(workdir) / "stage")
    checkpoints.save_state(manager, steps, state, {"step": steps})
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    restored, meta = checkpoints.restore_latest(manager, abstract)
    params = state.params if hasattr(state, "params") else state["params"]
    return {
        "mode": "quick" if quick else "grpo",
        "process_count": jax.process_count(),
        "devices": int(mesh.devices.size),
        "losses": losses,
        "param_abs_sum": float(
            jax.jit(lambda p: sum(jnp.abs(x).sum() for x in jax.tree.leaves(p)))(params)
        ),
        "restored_equal": _tree_equal(restored, state),
        "restored_sharding_equal": all(
            r.sharding.is_equivalent_to(s.sharding, r.ndim)
            for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
        ),
        "meta_step": meta["step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coordinator", required=True, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--workdir", required=True, help="shared directory (checkpoint, result)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="optax SGD on a linear model")
    args = parser.parse_args()
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    jax.config.update("jax_threefry_partitionable", True)  # as main.py: layout-free randomness
    result = run(Path(args.workdir), sh.make_mesh(MESH), args.steps, args.quick)
    if jax.process_index() == 0:  # one writer, as for metrics and exports
        (Path(args.workdir) / "result.json").write_text(json.dumps(result, indent=2))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
