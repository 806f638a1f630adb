"""`pipeline.run` on a device mesh gives the one-device results: same rollout tokens, same
metrics and params within float32 tolerance, and the state really is sharded.

One toy run of every trained stage kind (sft -> grpo -> forward_kl -> on_policy_kl, two steps
each, fresh-init teacher) on one device and on the (2, 2, 2) mesh of the 8 fake CPU devices, and
of the first two stages on (8, 1, 1) (pure data parallelism; the 4-row SFT batch does not divide
by 8 and falls back to whole rows on every device). About 80 s of CPU time with a warm compile
cache, most of it tracing and orbax saves.
The verifier is replaced by a reward that is a function of the completion text (its length's
parity), so GRPO sees non-zero advantages and the comparison covers its update too.

Tolerances (float32; the layouts sum in different orders): metrics rtol 1e-4 / atol 1e-5
(measured up to 1.2e-5 relative), params atol 1e-4 (measured up to 4.4e-5 after the eight
updates: Adam moves a weight whose gradient is ~0 by up to ~lr = 1e-3 either way, so its sign can
follow rounding noise). Rollout tokens must be equal: sampling keys do not depend on the layout
(`jax_threefry_partitionable`), and logits that differ by ~1e-6 do not change a sampled token
here; a near-tie on another machine could, which would show as a token mismatch below.
"""

import jax
import numpy as np
import pytest
from conftest import fake_grader, shrink_config
from jax.sharding import PartitionSpec as Spec

from configs import toy_arith
from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.grading import rewards
from s2d_jax.workflow import batches, metrics, pipeline, report, stage_loop

STAGES = ("student_sft", "direct_grpo", "raw_fkl", "raw_opd")
MESHES = {
    "one": ((1, 1, 1), STAGES),
    "2x2x2": ((2, 2, 2), STAGES),
    "8x1x1": ((8, 1, 1), STAGES[:2]),
}


def _config(mesh_shape, keep_stages):
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=keep_stages)
    for stage in config.stages.values():
        stage.save_every = 2  # one checkpoint per stage (each save costs ~1 s)
    for name in ("raw_fkl", "raw_opd"):
        if name in config.stages:
            config.stages[name].teacher = "base"  # a fresh teacher: no teacher stages to run
    config.eval.splits = ""  # no eval sampling: the stages' own rollouts are compared below
    config.probe.data = ""  # nor probe rows
    config.mesh.update(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])
    return config


# Reward 1 for a completion of odd length: deterministic, and mixed within a group.
_ParityGrader = fake_grader(lambda text, reference: len(text) % 2)


def _run(tmp_path_factory, name, mesh_shape, keep_stages):
    """Run the pipeline on the first prod(mesh_shape) devices; record rollouts and states."""
    tokens, states = [], {}
    sample, run_loop = batches.sample, stage_loop.run_loop

    def recording_sample(*args, **kwargs):
        rollout, stats = sample(*args, **kwargs)
        tokens.append(np.asarray(rollout.tokens))
        return rollout, stats

    def recording_loop(**kwargs):
        state, last = run_loop(**kwargs)
        states[kwargs["desc"]] = state
        return state, last

    workdir = tmp_path_factory.mktemp(name)
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rewards, "Grader", _ParityGrader)
        mp.setattr(batches, "sample", recording_sample)
        mp.setattr(stage_loop, "run_loop", recording_loop)
        mp.setattr(report, "write_report", lambda *args: "")  # the figure costs seconds
        pipeline.run(_config(mesh_shape, keep_stages), workdir, devices=devices)
    rows = {
        s: [
            {k: v for k, v in r.items() if not k.startswith("time/") and not k.endswith("per_s")}
            for r in metrics.read_metrics(workdir / s)
        ]
        for s in keep_stages
    }
    return {"tokens": tokens, "states": states, "metrics": rows}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {name: _run(tmp_path_factory, name, *spec) for name, spec in MESHES.items()}


def test_reference_run_is_not_trivial(runs):
    one = runs["one"]
    assert list(one["states"]) == list(STAGES)
    grpo = one["metrics"]["direct_grpo"]
    assert [r["step"] for r in grpo] == [1, 2]
    assert all(0 < r["grpo/reward"] < 1 and r["train/grad_norm"] > 0 for r in grpo)
    # grpo (2 steps) + teacher rollouts for forward_kl (1 call) + on_policy_kl (2 steps)
    assert len(one["tokens"]) == 5


@pytest.mark.parametrize("name", ["2x2x2", "8x1x1"])
def test_rollout_tokens_equal_one_device(runs, name):
    ref, got = runs["one"]["tokens"], runs[name]["tokens"]
    assert len(got) == {"2x2x2": 5, "8x1x1": 2}[name]
    for a, b in zip(ref, got, strict=False):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("name", ["2x2x2", "8x1x1"])
def test_metrics_equal_one_device(runs, name):
    for stage in MESHES[name][1]:
        ref, got = runs["one"]["metrics"][stage], runs[name]["metrics"][stage]
        assert [r.keys() for r in got] == [r.keys() for r in ref], stage
        for a, b in zip(ref, got, strict=True):
            keys = sorted(a)
            np.testing.assert_allclose(
                [b[k] for k in keys], [a[k] for k in keys], rtol=1e-4, atol=1e-5, err_msg=stage
            )


@pytest.mark.parametrize("name", ["2x2x2", "8x1x1"])
def test_params_equal_one_device(runs, name):
    for stage in MESHES[name][1]:
        ref = jax.device_get(runs["one"]["states"][stage].params)
        got = jax.device_get(runs[name]["states"][stage].params)
        flat_ref, flat_got = jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(got)
        for (path, a), b in zip(flat_ref, flat_got, strict=True):
            where = f"{stage} {jax.tree_util.keystr(path)}"
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4, err_msg=where)


def test_state_is_sharded_on_the_mesh(runs):
    """(2, 2, 2): weights and their Adam moments split over fsdp and tensor (TRAIN_RULES)."""
    for stage in STAGES:
        state = runs["2x2x2"]["states"][stage]
        wq = state.params["layers"]["wq"]  # [L, D, H, Dh]
        assert wq.sharding.spec == Spec(None, "fsdp", "tensor", None), stage
        assert dict(wq.sharding.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
        assert wq.addressable_shards[0].data.shape[1:3] == (wq.shape[1] // 2, wq.shape[2] // 2)
        moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == wq.shape]
        assert len(moments) == 2 and all(m.sharding.spec == wq.sharding.spec for m in moments)
    one = runs["one"]["states"]["student_sft"].params["layers"]["wq"]
    assert len(one.sharding.device_set) == 1


# ----------------------------------------------------------------------------- the pieces


def test_put_rows_keeps_host_order_and_falls_back_to_whole_rows():
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    host = {"tokens": np.arange(8 * 3).reshape(8, 3), "advantages": np.arange(8.0)}
    placed = placement.put_rows(mesh, host)
    assert placed["tokens"].sharding.spec == Spec(("data", "fsdp"))
    # rows 2i, 2i+1 on the i-th (data, fsdp) shard, whole over tensor
    for shard in placed["tokens"].addressable_shards:
        rows = np.arange(8)[shard.index[0]]
        np.testing.assert_array_equal(shard.data, host["tokens"][rows])
    jax.tree.map(np.testing.assert_array_equal, placement.to_host(placed), host)
    # 2 rows divide data=2 only; 3 rows divide nothing: whole on every device
    assert placement.put_rows(mesh, np.zeros((2, 5))).sharding.spec == Spec("data")
    three = placement.put_rows(mesh, np.arange(3.0))
    assert three.sharding.spec == Spec(None) and three.is_fully_replicated
    np.testing.assert_array_equal(placement.to_host(three), np.arange(3.0))


def test_one_device_is_the_unsharded_path_and_a_config_needs_a_mesh():
    assert placement.build_mesh(sh.MeshConfig(-1, 1, 1), jax.devices()[:1]) is None
    config = _config((1, 1, 1), STAGES[:1])
    del config["mesh"]
    with pytest.raises(KeyError, match=r"missing key\(s\) \['mesh'\]"):
        pipeline.validate(config)
    mesh = placement.build_mesh(sh.MeshConfig(1, -1, 2))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}


def test_mesh_errors_are_named_before_any_file(tmp_path):
    config = _config((3, 1, 1), STAGES[:1])
    with pytest.raises(ValueError, match=r"mesh\.data=3"):
        pipeline.run(config, tmp_path / "run")
    config = _config((1, 1, 1), STAGES[:1])
    config.mesh.pipeline = 2
    with pytest.raises(KeyError, match=r"config\.mesh.*pipeline"):
        pipeline.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
