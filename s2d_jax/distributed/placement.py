"""Where a pipeline stage's arrays live: the mesh of `config.mesh`, and params, train state,
batches and sampler weights put on it (and copied back to the host).

    mesh = placement.build_mesh(mesh_cfg)                         # None on a single device
    params = placement.init_params(mesh, cfg, key)                # built on its shards
    state = placement.init_state(mesh, cfg, opt_cfg, params)
    update = placement.jit_update(mesh, step_cfg, cfg, state, teacher_cfg, teacher_params)
    state, metrics = update(state, host_batch)                    # {"tokens": [B, T], ...}
    tokens_BT, mask_BT = placement.put_rows(mesh, (tokens_BT, mask_BT))
    logprobs = placement.to_host(steps.score_tokens(cfg, params, tokens_BT, mask_BT))

`mesh` None is the unsharded path (one device): every function then runs the plain code with no
shardings at all, so one-device numbers are those of `decoder` and `steps` alone. With a mesh,
params and the AdamW state follow `sharding.TRAIN_RULES`, batches are split by rows
(`sharding.rows_sharding`) and the sampler gets `SAMPLE_RULES` weights; which mesh axes split
what is decided in `sharding.py`, this module only moves arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from s2d_jax.distributed import sharding as sh
from s2d_jax.learn import optimizer, steps
from s2d_jax.model import cached_forward, decoder


def build_mesh(mesh_cfg: sh.MeshConfig, devices: Sequence | None = None) -> Mesh | None:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default all of every process), or None
    (nothing sharded: the plain one-device path) when it would hold a single device. Sizes that
    do not fit the device count raise, naming the axis."""
    devices = list(jax.devices() if devices is None else devices)
    mesh_cfg.shape(len(devices))
    if len(devices) == 1:
        return None
    return sh.make_mesh(mesh_cfg, devices)


def init_params(mesh: Mesh | None, cfg: decoder.ModelConfig, key: jax.Array):
    """`decoder.init_params`, each shard created on its own device (jit with out_shardings)."""
    if mesh is None:
        return decoder.init_params(cfg, key)
    init = jax.jit(
        functools.partial(decoder.init_params, cfg), out_shardings=sh.param_shardings(mesh, cfg)
    )
    return init(key)


def init_state(
    mesh: Mesh | None, cfg: decoder.ModelConfig, opt_cfg: optimizer.OptimizerConfig, params
):
    """`steps.init_train_state`; with a mesh the AdamW moments take their parameter's sharding
    and everything else (the step, optimizer counters) is replicated."""
    if mesh is None:
        # Committed to the device, as the step's outputs are: an uncommitted first state would
        # compile the step a second time for the same shapes.
        state = steps.init_train_state(cfg, opt_cfg, params)
        return jax.device_put(state, jax.local_devices()[0])

    def init(params):
        return steps.init_train_state(cfg, opt_cfg, params)

    abstract = jax.eval_shape(init, params)
    shardings = sh.shardings_like_params(
        abstract, decoder.abstract_params(cfg), sh.param_shardings(mesh, cfg)
    )
    return jax.jit(init, out_shardings=shardings)(params)


def jit_update(
    mesh: Mesh | None,
    step_cfg: steps.StepConfig,
    cfg: decoder.ModelConfig,
    state,
    teacher_cfg: decoder.ModelConfig | None = None,
    teacher_params=None,
):
    """(state, host batch) -> (state, metrics): the jitted, state-donating train step.

    The frozen teacher's params are bound in when the objective reads them. With a mesh the step
    is jitted with the state's, the teacher's and the rows' shardings (one compile per row count)
    and the host batch is put on the mesh by rows.
    """
    takes_teacher = step_cfg.needs_teacher
    if mesh is None:
        step = steps.jit_train_step(step_cfg, cfg, teacher_cfg)
        if not takes_teacher:
            return step
        return lambda state, batch: step(state, teacher_params, batch)

    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    teacher_sharding = jax.tree.map(lambda x: x.sharding, teacher_params) if takes_teacher else None
    compiled = {}

    def update(state, batch):
        rows = len(batch["tokens"])
        if rows not in compiled:
            compiled[rows] = steps.jit_train_step(
                step_cfg,
                cfg,
                teacher_cfg,
                state_sharding=state_sharding,
                batch_sharding=sh.rows_sharding(mesh, rows),
                teacher_sharding=teacher_sharding,
            )
        batch = put_rows(mesh, batch)
        if takes_teacher:
            return compiled[rows](state, teacher_params, batch)
        return compiled[rows](state, batch)

    return update


def put_rows(mesh: Mesh | None, host_tree):
    """Host arrays [B, ...] of a whole batch, the same on every process -> global arrays split
    by rows (`sharding.rows_sharding`); unchanged without a mesh. Each process transfers only the
    rows its own devices hold, and the global row order is the host order whatever the device
    layout."""
    if mesh is None:
        return host_tree

    def put(x):
        x = np.asarray(x)
        sharding = sh.rows_sharding(mesh, x.shape[0])
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, host_tree)


def to_host(tree):
    """NumPy copies of a tree's arrays; an array spanning processes is gathered to every process
    (a collective: all processes must call it)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def process_rows(global_rows: int) -> slice:
    """The slice of a global batch's rows that this process handles (contiguous, equal parts)."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ValueError(f"global batch of {global_rows} rows does not split over {n} processes")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def sampling_params(mesh: Mesh | None, cfg: decoder.ModelConfig, params):
    """`cached_forward.PerLayerParams` in the compute dtype laid out for decoding
    (`SAMPLE_RULES`: whole over fsdp), the form `sampler.generate` decodes with.
    Re-laying out, casting and unstacking in one program leaves one sampling copy of the weights
    on each device, not a stacked one plus the per-layer one. Without a mesh the stacked params
    are returned as they are (`generate` unstacks and casts them)."""
    if mesh is None:
        return params
    return _unstack_to_sampling_layout(mesh, cfg)(params)


@functools.cache
def _unstack_to_sampling_layout(mesh: Mesh, cfg: decoder.ModelConfig):
    """The jitted stacked -> `PerLayerParams` copy whose out_shardings are
    `sharding.per_layer_shardings` of the SAMPLE_RULES shardings (a PerLayerParams too)."""
    shardings = sh.per_layer_shardings(sh.param_shardings(mesh, cfg, sh.SAMPLE_RULES), cfg.n_layers)
    unstack = functools.partial(cached_forward.unstack_layers, dtype=cfg.compute_dtype)
    return jax.jit(unstack, out_shardings=shardings)
