"""Sharding on 8 fake CPU devices: meshes, specs, placement, and sharded == one-device numerics.

The golden table `tests/golden/toy_partition_specs.json` holds the PartitionSpecs of the toy
teacher (vocab 32) on the (2, 2, 2) mesh under TRAIN_RULES. It was checked by hand against the
rules (embed -> fsdp; heads, kv_heads, mlp, vocab -> tensor; the rest whole). After an intended
change of the rules or the parameter layout, regenerate it with
    S2D_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_sharding.py -k golden
and review the diff before committing.
"""

import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import records
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.learn import steps
from s2d_jax.model import cached_forward, decoder, hf_io
from s2d_jax.rollout import sampler

GOLDEN = Path(__file__).parent / "golden" / "toy_partition_specs.json"
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2)]


@pytest.fixture(scope="module")
def toy():
    cfg = decoder.ModelConfig.preset("toy_teacher", vocab_size=32)
    # Host-side normal(0, 0.1) weights (5x the default init): peaked attention and logits up to
    # ~4, where a wrong layout shows; float32 reduction order across shards then moves logits by
    # up to ~6e-6. (Eager `decoder.init_params` compiles one kernel per leaf: slow on 2 cores.)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: rng.normal(0.0, 0.1, a.shape).astype(np.float32), decoder.abstract_params(cfg)
    )
    return cfg, params


def _batch(cfg, rows=8, T=12):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (rows, T)).astype(np.int32)
    mask = np.ones((rows, T), bool)
    mask[1, :3] = False  # a left-padded row
    mask[2, -4:] = False  # a right-padded row
    return tokens, mask


def _loss_and_logits(cfg, params, tokens, mask):
    """Mean next-token log-softmax loss over real target positions, and the logits [B, T, V]."""
    logits = decoder.forward(cfg, params, tokens, mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target_lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    weight = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
    return -(target_lp * weight).sum() / weight.sum(), logits


def _grad_and_logits(cfg, params, tokens, mask):
    grads, logits = jax.grad(_loss_and_logits, argnums=1, has_aux=True)(cfg, params, tokens, mask)
    return grads, logits


def _spec_to_json(spec):
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def _bytes_per_device(tree) -> dict[int, int]:
    """{device id: bytes of `tree`'s shards held there}."""
    totals: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device.id] = totals.get(shard.device.id, 0) + shard.data.nbytes
    return totals


# ----------------------------------------------------------------------------- meshes


def test_mesh_config_resolves_the_free_axis():
    assert sh.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
    assert sh.MeshConfig(data=-1, fsdp=1, tensor=1).shape(8) == (8, 1, 1)
    assert sh.MeshConfig(data=1, fsdp=8, tensor=1).shape(8) == (1, 8, 1)
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sh.make_mesh(sh.MeshConfig(), devices=jax.devices()[:4]).devices.size == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=3), r"mesh\.data=3"),
        (dict(data=1, fsdp=1, tensor=3), r"mesh\.tensor=3"),
        (dict(data=4, fsdp=1, tensor=1), r"use 4 devices but 8"),
        (dict(data=4, fsdp=4, tensor=-1), r"multiply to 16"),
    ],
)
def test_mesh_config_errors_name_the_axis(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sh.MeshConfig(**kwargs).shape(8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=0), r"mesh\.data"),
        (dict(data=-1, fsdp=-1), "at most one"),
        (dict(tensor=2.0), "tensor"),
    ],
)
def test_mesh_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sh.MeshConfig(**kwargs)


# ----------------------------------------------------------------------------- specs


def test_logical_to_spec_drops_axes_that_do_not_fit():
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=2, tensor=4))
    rules = sh.TRAIN_RULES
    # n_kv_heads=2 on tensor=4: replicated; heads=8 split.
    assert sh.logical_to_spec(mesh, ("embed", "kv_heads"), rules, (16, 2)) == Spec("fsdp", None)
    assert sh.logical_to_spec(mesh, ("embed", "heads"), rules, (16, 8)) == Spec("fsdp", "tensor")
    # A mesh axis already used by an earlier dimension is not used twice.
    assert sh.logical_to_spec(mesh, ("heads", "mlp"), rules, (8, 8)) == Spec("tensor", None)
    # Without a shape only the reuse rule applies.
    assert sh.logical_to_spec(mesh, ("act_batch", None), rules) == Spec(("data", "fsdp"), None)
    mesh222 = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    # A batch of 2 rows fits data=2 but not data x fsdp = 4: the leading part is kept.
    assert sh.logical_to_spec(mesh222, ("act_batch",), rules, (2,)) == Spec("data")
    assert sh.logical_to_spec(mesh222, ("act_batch",), rules, (4,)) == Spec(("data", "fsdp"))
    assert sh.logical_to_spec(mesh222, ("act_batch",), rules, (3,)) == Spec(None)


def test_logical_to_spec_errors():
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    with pytest.raises(KeyError, match="'bogus' has no rule"):
        sh.logical_to_spec(mesh, ("bogus",), sh.TRAIN_RULES)
    with pytest.raises(KeyError, match="mesh axis 'pipe'"):
        sh.logical_to_spec(mesh, ("embed",), (("embed", "pipe"),))
    with pytest.raises(ValueError, match="rank"):
        sh.logical_to_spec(mesh, ("embed",), sh.TRAIN_RULES, (4, 4))


def test_sample_rules_keep_weights_whole_over_fsdp(toy):
    cfg, _ = toy
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    specs = sh.param_specs(mesh, cfg, sh.SAMPLE_RULES)
    for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, Spec)):
        assert "fsdp" not in jax.tree.leaves(tuple(spec))
    assert specs["layers"]["wq"] == Spec(None, None, "tensor", None)
    assert dict(sh.SAMPLE_RULES)["act_batch"] == ("data", "fsdp")


def test_param_shardings_without_a_mesh_are_none(toy):
    """None is what `hf_io.load_hf` and `checkpoints.load_exported_params` take for unsharded."""
    cfg, _ = toy
    assert sh.param_shardings(None, cfg) is None


def test_golden_partition_specs(toy):
    """Specs of the toy teacher on (2,2,2) with TRAIN_RULES; S2D_REGEN_GOLDEN=1 rewrites the file."""
    cfg, _ = toy
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    flat = jax.tree_util.tree_flatten_with_path(
        sh.param_specs(mesh, cfg, sh.TRAIN_RULES), is_leaf=lambda x: isinstance(x, Spec)
    )[0]
    table = {"/".join(k.key for k in path): _spec_to_json(spec) for path, spec in flat}
    cache = sh.cache_shardings(mesh, cfg, batch=8, max_len=32, rules=sh.TRAIN_RULES)
    table["cache/k"] = _spec_to_json(cache[0]["k"].spec)
    if os.environ.get("S2D_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table.items())]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    assert table == json.loads(GOLDEN.read_text())


# ----------------------------------------------------------------------------- placement


def test_per_device_bytes_shrink_as_promised(toy):
    cfg, params = toy
    shapes = decoder.param_shapes(cfg)
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2)
    full = sum(4 * math.prod(shape) for shape, _ in leaves)
    tensor_names = {"heads", "kv_heads", "mlp", "vocab"}
    # Independent expectation from the axis names alone (every toy dimension divides 2 and 8).
    expect_fsdp8 = sum(4 * math.prod(s) / (8 if "embed" in a else 1) for s, a in leaves)
    expect_222 = sum(
        4 * math.prod(s) / (2 if "embed" in a else 1) / (2 if tensor_names & set(a) else 1)
        for s, a in leaves
    )
    got = {}
    for shape in MESHES:
        mesh = sh.make_mesh(sh.MeshConfig(*shape))
        placed = jax.device_put(params, sh.param_shardings(mesh, cfg, sh.TRAIN_RULES))
        per_device = _bytes_per_device(placed)
        assert len(per_device) == 8 and len(set(per_device.values())) == 1, per_device
        got[shape] = per_device[0]
    assert got[(8, 1, 1)] == full  # pure data parallelism: a full copy everywhere
    assert got[(1, 8, 1)] == expect_fsdp8 < full / 6
    assert got[(2, 2, 2)] == expect_222 < full / 3


def test_init_state_places_state_and_opt_state_mirrors_params(toy):
    cfg, params = toy
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    state = placement.init_state(mesh, cfg, records.optimizer_config(lr=1e-3), params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    [adam] = [x for x in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(x)]
    for tree in (state.params, adam.mu, adam.nu):
        assert tree["layers"]["wq"].sharding.spec == Spec(None, "fsdp", "tensor", None)
        assert tree["embed"].sharding.spec == Spec("tensor", "fsdp")
        assert tree["layers"]["attn_norm"].sharding.spec == Spec(None, None)
    assert not np.any(jax.device_get(adam.mu["lm_head"]))
    assert adam.count.sharding.spec == Spec()
    assert state.step.sharding.spec == Spec()
    assert state.params["lm_head"].sharding.spec == Spec("fsdp", "tensor")


def test_shardings_like_params_matches_by_path_and_shape(toy):
    """A leaf that ends with a param's path but has another shape (factored stats) is replicated."""
    cfg, _ = toy
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    shardings = sh.param_shardings(mesh, cfg, sh.TRAIN_RULES)
    abstract = decoder.abstract_params(cfg)
    wq = abstract["layers"]["wq"]
    tree = {
        "mu": abstract,
        "row_stats": {"layers": {"wq": jax.ShapeDtypeStruct(wq.shape[:2], wq.dtype)}},
        "count": jax.ShapeDtypeStruct((), jnp.int32),
    }
    got = sh.shardings_like_params(tree, abstract, shardings)
    assert got["mu"]["layers"]["wq"] == shardings["layers"]["wq"]
    assert got["row_stats"]["layers"]["wq"].spec == Spec()
    assert got["count"].spec == Spec()


def test_load_hf_places_each_tensor_on_its_shard(tmp_path, toy):
    """As `pipeline.load_params` reads an HF checkpoint onto the mesh."""
    cfg, params = toy
    hf_io.save_hf(tmp_path, cfg, params)
    mesh = sh.make_mesh(sh.MeshConfig(1, 4, 2))
    hf_cfg = decoder.ModelConfig.from_hf_config(hf_io.read_hf_config(tmp_path))
    expected = sh.param_shardings(mesh, hf_cfg, sh.TRAIN_RULES)
    cfg2, loaded = hf_io.load_hf(tmp_path, shardings=expected)
    assert cfg2.n_layers == cfg.n_layers
    for array, sharding in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
        assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)


# ----------------------------------------------------------------------------- numerics


@pytest.fixture(scope="module")
def one_device_reference(toy):
    cfg, params = toy
    tokens, mask = _batch(cfg)
    args = jax.device_put((params, tokens, mask), jax.devices()[0])
    return jax.device_get(jax.jit(_grad_and_logits, static_argnums=0)(cfg, *args))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_and_grad_equal_one_device(toy, one_device_reference, shape):
    cfg, params = toy
    tokens, mask = _batch(cfg)
    mesh = sh.make_mesh(sh.MeshConfig(*shape))
    p_shard = sh.param_shardings(mesh, cfg, sh.TRAIN_RULES)
    b_shard = sh.rows_sharding(mesh, len(tokens))
    logits_sharding = NamedSharding(mesh, Spec(sh.BATCH_AXES, None, "tensor"))
    step = jax.jit(
        lambda p, t, m: _grad_and_logits(cfg, p, t, m),
        in_shardings=(p_shard, b_shard, b_shard),
        out_shardings=(p_shard, logits_sharding),
    )
    grads, logits = step(jax.device_put(params, p_shard), *placement.put_rows(mesh, (tokens, mask)))
    ref_grads, ref_logits = one_device_reference
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(jax.device_get(logits), ref_logits, atol=1e-5, rtol=1e-5)
    jax.tree.map(
        lambda g, r: np.testing.assert_allclose(jax.device_get(g), r, atol=1e-5, rtol=1e-5),
        grads,
        ref_grads,
    )
    assert grads["layers"]["w_up"].sharding.spec == p_shard["layers"]["w_up"].spec


# ----------------------------------------------------------------------------- sampler, train step
# (8, 1, 1) and (1, 8, 1) are slow here (a compile each on two CPU cores); (2, 2, 2) uses all
# three axes at once and stays in the fast suite.
MESH_PARAMS = [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((1, 8, 1), marks=pytest.mark.slow),
    (2, 2, 2),
]
PROMPTS = [[1, 5, 7, 9], [3, 4], [2, 8, 8, 1, 6, 30], [11], [5, 5, 5], [9, 8, 7], [4], [31, 2]]


def _greedy(cfg, params, mesh):
    return sampler.generate(
        cfg, params, PROMPTS, max_new_tokens=6, temperature=0.0, eos_id=(), pad_id=0, mesh=mesh
    )


@pytest.fixture(scope="module")
def one_device_greedy(toy):
    cfg, params = toy
    return jax.device_get(_greedy(cfg, jax.device_put(params, jax.devices()[0]), None))


@pytest.mark.parametrize("shape", MESH_PARAMS)
def test_sharded_greedy_sampling_equals_one_device(toy, one_device_greedy, shape):
    """From training-laid-out params through `placement.sampling_params`, as the pipeline samples:
    per-layer weights on SAMPLE_RULES shardings, equal to the stacked slices."""
    cfg, params = toy
    mesh = sh.make_mesh(sh.MeshConfig(*shape))
    placed = jax.device_put(params, sh.param_shardings(mesh, cfg, sh.TRAIN_RULES))
    sampling = placement.sampling_params(mesh, cfg, placed)
    stacked_specs = sh.param_specs(mesh, cfg, sh.SAMPLE_RULES)["layers"]
    assert isinstance(sampling, cached_forward.PerLayerParams)
    assert len(sampling.layers) == cfg.n_layers
    for i, layer in enumerate(sampling.layers):
        for name, w in layer.items():
            assert w.sharding.spec == Spec(*stacked_specs[name][1:]), name
            np.testing.assert_array_equal(jax.device_get(w), params["layers"][name][i])
    assert (
        sampling.rest["embed"].sharding.spec == sh.param_specs(mesh, cfg, sh.SAMPLE_RULES)["embed"]
    )
    out = _greedy(cfg, sampling, mesh)
    np.testing.assert_array_equal(jax.device_get(out.tokens), one_device_greedy.tokens)
    np.testing.assert_allclose(
        jax.device_get(out.logprobs), one_device_greedy.logprobs, atol=1e-5, rtol=1e-5
    )


def _grpo_setup(cfg, params):
    tokens, mask = _batch(cfg)
    rng = np.random.default_rng(1)
    batch = {
        "tokens": tokens,
        "attention_mask": mask,
        "loss_mask": (mask[:, 1:] & mask[:, :-1]).astype(np.float32),
        "old_logprobs": -rng.uniform(2.0, 4.0, (8, tokens.shape[1] - 1)).astype(np.float32),
        "advantages": rng.standard_normal(8).astype(np.float32),
    }
    step_cfg = records.step_config(
        "grpo", records.optimizer_config(lr=1e-3), records.grpo_config(kl_coef=0.0), chunk_size=4
    )
    state = steps.init_train_state(cfg, step_cfg.optimizer, params)
    return step_cfg, jax.device_get(state), batch


def _two_steps(step, state, batch):
    losses = []
    for _ in range(2):  # the second loss sees the first update: a wrong update shows there
        state, metrics = step(state, batch)
        losses.append((float(metrics["train/loss"]), float(metrics["train/grad_norm"])))
    return jax.device_get(state), losses


@pytest.fixture(scope="module")
def one_device_train(toy):
    cfg, params = toy
    step_cfg, state, batch = _grpo_setup(cfg, params)
    step = steps.jit_train_step(step_cfg, cfg)
    return _two_steps(step, *jax.device_put((state, batch), jax.devices()[0]))


@pytest.mark.parametrize("shape", MESH_PARAMS)
def test_sharded_train_step_equals_one_device(toy, one_device_train, shape):
    cfg, params = toy
    step_cfg, state, batch = _grpo_setup(cfg, params)
    mesh = sh.make_mesh(sh.MeshConfig(*shape))
    p_shardings = sh.param_shardings(mesh, cfg, sh.TRAIN_RULES)
    s_shardings = sh.shardings_like_params(state, decoder.abstract_params(cfg), p_shardings)
    step = steps.jit_train_step(
        step_cfg, cfg, state_sharding=s_shardings, batch_sharding=sh.rows_sharding(mesh, 8)
    )
    state = jax.device_put(state, s_shardings)
    batch = placement.put_rows(mesh, batch)
    new_state, losses = _two_steps(step, state, batch)
    ref_state, ref_losses = one_device_train
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    # Each Adam update moves a weight by ~lr = 1e-3 whatever the gradient's size, so a weight
    # whose gradient is ~0 can differ by a few 1e-6 between layouts; 1e-5 is 1% of one update.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
        new_state.params,
        ref_state.params,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
        new_state.opt_state,
        ref_state.opt_state,
    )
