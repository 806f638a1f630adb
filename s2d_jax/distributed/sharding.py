"""The device mesh and the logical-axis rules: which mesh axes split each dimension of an array.

The model names the axes of every array (`decoder.param_axes`, `cached_forward.cache_axes`); a
rules table maps those logical names to the mesh axes `data`, `fsdp` and `tensor`. Training and
sampling use different tables (sampling keeps whole weights on each FSDP shard: no all-gather per
token). Everything here computes specs and shardings; putting arrays on them is `placement.py`.

    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))   # -1: the rest of the devices
    shardings = param_shardings(mesh, cfg)                    # a tree like the params, TRAIN_RULES
    specs = param_specs(mesh, cfg, SAMPLE_RULES)              # PartitionSpecs, whole over fsdp
    rows = rows_sharding(mesh, 8)                             # [8, ...] split over data x fsdp
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.model import cached_forward, decoder

AXES = ("data", "fsdp", "tensor")
# Rows of a batch are split over both (FSDP is data parallelism too). The sampler splits its rows
# the same way, so fsdp shards sample other rows instead of repeating the data shards' work.
BATCH_AXES = decoder.ROW_MESH_AXES

MeshAxis = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxis], ...]

# Training: weights split over fsdp on their model dimension (ZeRO-3 style, gathered per layer by
# XLA) and over tensor on heads / mlp / vocab (Megatron style); activations split by rows.
TRAIN_RULES: Rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("norm", None),
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
)

# Sampling: the same, except that weights are replicated over fsdp. Decoding reads every weight
# once per token, so gathering FSDP shards each step would dominate; rows still use all devices.
SAMPLE_RULES: Rules = tuple((name, None if name == "embed" else axis) for name, axis in TRAIN_RULES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes. One of them may be -1: whatever the device count leaves over."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        for name in AXES:
            size = getattr(self, name)
            if not isinstance(size, int) or (size < 1 and size != -1):
                raise ValueError(f"mesh.{name} must be a positive int or -1, got {size!r}")
        if sum(getattr(self, n) == -1 for n in AXES) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {self}")

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) for `n_devices`; the -1 axis takes what the others leave."""
        fixed = {n: getattr(self, n) for n in AXES if getattr(self, n) != -1}
        for name, size in fixed.items():
            if n_devices % size:
                raise ValueError(f"mesh.{name}={size} does not divide the {n_devices} devices")
        product = math.prod(fixed.values())
        if n_devices % product:
            raise ValueError(
                f"mesh sizes {fixed} multiply to {product}, which does not divide the "
                f"{n_devices} devices"
            )
        sizes = {n: getattr(self, n) for n in AXES}
        free = [n for n in AXES if sizes[n] == -1]
        if free:
            sizes[free[0]] = n_devices // product
        elif product != n_devices:
            raise ValueError(
                f"mesh sizes {sizes} use {product} devices but {n_devices} are present; "
                "set one axis to -1 or make the product match"
            )
        return tuple(sizes[n] for n in AXES)


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: every device of every process).

    Axes are `Auto` (sharding propagated by XLA): the model code carries no sharding annotations
    of its own, jit's in/out shardings and a few constraints decide the layout.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_cfg.shape(len(devices))
    return jax.make_mesh(
        shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices
    )


# ----------------------------------------------------------------------------- logical -> mesh


def _mesh_axes(rules: Rules, name: str) -> tuple[str, ...]:
    for logical, target in rules:
        if logical == name:
            if target is None:
                return ()
            return (target,) if isinstance(target, str) else tuple(target)
    raise KeyError(f"logical axis {name!r} has no rule; rules cover {[r[0] for r in rules]}")


def logical_to_spec(
    mesh: Mesh,
    axes: Sequence[str | None],
    rules: Rules = TRAIN_RULES,
    shape: Sequence[int] | None = None,
) -> Spec:
    """The PartitionSpec of an array whose dimensions carry the logical names `axes`.

    Each name maps to mesh axes through `rules` (first match; None = replicated). A mesh axis is
    dropped from a dimension, silently and on purpose, when
      * it is already used by an earlier dimension of the same array (a mesh axis may shard only
        one dimension), or
      * `shape` is given and the dimension is not divisible by the product of the mesh axes kept
        so far times this one (e.g. n_kv_heads=2 on tensor=4: the kv heads are replicated
        rather than padded). For a tuple like ("data", "fsdp") a leading part that divides is kept.
    So a spec is always valid for its array; the price of a dropped axis is memory, not an error.
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and logical axes {tuple(axes)} differ in rank")
    used: set[str] = set()
    entries = []
    for dim, name in enumerate(axes):
        kept: list[str] = []
        for axis in () if name is None else _mesh_axes(rules, name):
            if axis not in mesh.shape:
                raise KeyError(f"rule for {name!r} names mesh axis {axis!r}; mesh has {mesh.shape}")
            size = math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]
            if axis in used or (shape is not None and shape[dim] % size):
                break
            kept.append(axis)
        used.update(kept)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return Spec(*entries)


def param_specs(mesh: Mesh, cfg: decoder.ModelConfig, rules: Rules = TRAIN_RULES) -> dict[str, Any]:
    """A tree like the params of PartitionSpecs (divisibility checked against the real shapes)."""
    return jax.tree.map(
        lambda leaf: logical_to_spec(mesh, leaf[1], rules, leaf[0]),
        decoder.param_shapes(cfg),
        is_leaf=_is_shape_axes,
    )


def param_shardings(
    mesh: Mesh | None, cfg: decoder.ModelConfig, rules: Rules = TRAIN_RULES
) -> dict[str, Any] | None:
    """A tree like the params of NamedShardings on `mesh` under `rules`; None without a mesh
    (what `hf_io.load_hf` and `checkpoints.load_exported_params` take for "unsharded")."""
    if mesh is None:
        return None
    specs = param_specs(mesh, cfg, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def per_layer_shardings(shardings: dict[str, Any], n_layers: int):
    """`param_shardings` for the params of `cached_forward.unstack_layers`: a
    `cached_forward.PerLayerParams` of shardings, its `layers` `n_layers` trees, each slice keeping
    its stacked weight's sharding without the (never sharded) leading layer axis."""
    from s2d_jax.model import cached_forward

    one_layer = jax.tree.map(
        lambda s: NamedSharding(s.mesh, Spec(*s.spec[1:])), shardings["layers"]
    )
    rest = {name: s for name, s in shardings.items() if name != "layers"}
    return cached_forward.PerLayerParams(layers=(one_layer,) * n_layers, rest=rest)


def cache_shardings(
    mesh: Mesh, cfg: decoder.ModelConfig, batch: int, max_len: int, rules: Rules = TRAIN_RULES
) -> tuple[dict[str, Any], ...]:
    """Shardings of `cached_forward.init_cache(cfg, batch, max_len)`: per layer, [B, K, S, Dh]
    leaves named by `cached_forward.cache_axes`."""
    shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    return jax.tree.map(
        lambda axes: NamedSharding(mesh, logical_to_spec(mesh, axes, rules, shape)),
        cached_forward.cache_axes(cfg),
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x),
    )


def _is_shape_axes(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def _is_spec(x) -> bool:
    return isinstance(x, Spec)


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (scalars, step counters, RNG keys)."""
    return NamedSharding(mesh, Spec())


def rows_sharding(mesh: Mesh, rows: int) -> NamedSharding:
    """Leading dimension of `rows` over data x fsdp, or over the leading part of it that divides
    `rows` (replicated when none does, as `logical_to_spec` drops axes that do not fit); other
    dimensions whole, any rank."""
    return NamedSharding(mesh, logical_to_spec(mesh, ("act_batch",), TRAIN_RULES, (rows,)))


def shardings_like_params(abstract_tree, abstract_params, param_shardings_tree):
    """Shardings for a tree that embeds copies of the params (a train state, an optax state).

    Optax states mirror the params: Adam's `mu` and `nu` hold a params-shaped tree under their
    own path prefix. A leaf whose tree path *ends with* a parameter's path and has that
    parameter's shape gets that parameter's sharding (the longest matching path wins); every
    other leaf (step counts, RNG keys, scalars, factored statistics) is replicated.
    """
    by_path = {}
    flat_shapes, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    flat_shardings = jax.tree.leaves(param_shardings_tree)
    if len(flat_shapes) != len(flat_shardings):
        raise ValueError(
            f"abstract_params has {len(flat_shapes)} leaves, shardings {len(flat_shardings)}"
        )
    for (path, leaf), sharding in zip(flat_shapes, flat_shardings, strict=True):
        by_path[tuple(path)] = (tuple(leaf.shape), sharding)
    mesh = flat_shardings[0].mesh
    longest = max(len(p) for p in by_path)

    def pick(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        for n in range(min(longest, len(path)), 0, -1):
            match = by_path.get(tuple(path[-n:]))
            if match is not None and match[0] == shape:
                return match[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)
