"""Multi-host JAX on one machine, and checkpoints that move between mesh shapes.

Two Python processes on 127.0.0.1 (2 fake CPU devices each, gloo collectives) run
`s2d_jax.tools.multihost_smoke`: a 4-device global mesh, each process copying in only its own
devices' rows, sharded updates, an orbax checkpoint saved and restored by both. The result must equal the same
`run` on 4 devices of this single process (the reference: one controller, same mesh shape).
The fast test uses the smoke script's `--quick` step (plain optax SGD on a linear model); the
slow one runs `steps.train_step` with the GRPO objective (its compile takes ~30 s per process).
A second slow test runs the real entry point, `python -m s2d_jax.main --distributed`, in two
processes: the toy pipeline's SFT and GRPO stages (sampling, grading split over the processes,
eval, export) on a (1, 2, 2) mesh, compared with `pipeline.run` on 4 devices of this process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import records
from jax.sharding import PartitionSpec as Spec

from s2d_jax.distributed import sharding as sh
from s2d_jax.learn import steps
from s2d_jax.model import decoder
from s2d_jax.tools import multihost_smoke
from s2d_jax.workflow import checkpoints, metrics, pipeline

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(workdir: Path, extra_args: list[str], timeout: float) -> dict:
    """Run the smoke script as processes 0 and 1; return process 0's result.json."""

    def command(address, i):
        cmd = [sys.executable, "-m", "s2d_jax.tools.multihost_smoke", "--coordinator", address]
        cmd += ["--num_processes", "2", "--process_id", str(i), "--workdir", str(workdir)]
        return cmd + extra_args

    _run_two_processes(workdir, command, timeout)
    return json.loads((workdir / "result.json").read_text())


def _run_two_processes(workdir: Path, command, timeout: float) -> None:
    """Run `command(coordinator_address, process_id)` as processes 0 and 1 (2 CPU devices each)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    address = f"127.0.0.1:{_free_port()}"
    procs, logs = [], []
    for i in range(2):
        log = open(workdir / f"process_{i}.log", "w")
        procs.append(
            subprocess.Popen(command(address, i), cwd=REPO, env=env, stdout=log, stderr=log)
        )
        logs.append(log)
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # jax's preemption notifier swallows SIGTERM
                p.wait()
        for log in logs:
            log.close()
    tails = "\n".join(
        f"--- process {i}:\n" + (workdir / f"process_{i}.log").read_text()[-3000:] for i in range(2)
    )
    assert codes == [0, 0], f"exit codes {codes} (None: timed out after {timeout} s)\n{tails}"


def _check_against_single_process(result: dict, reference: dict):
    assert result["process_count"] == 2 and reference["process_count"] == 1
    assert result["devices"] == reference["devices"] == 4
    assert result["restored_equal"] and result["restored_sharding_equal"]
    assert result["meta_step"] == len(result["losses"])
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["param_abs_sum"], reference["param_abs_sum"], rtol=1e-5)
    assert len(set(result["losses"])) == len(result["losses"])  # the steps did change the params


def _reference(tmp_path: Path, quick: bool) -> dict:
    mesh = sh.make_mesh(multihost_smoke.MESH, devices=jax.devices()[:4])
    return multihost_smoke.run(tmp_path / "reference", mesh, steps=3, quick=quick)


def test_two_processes_quick_step_save_restore(tmp_path):
    result = _launch_two_processes(tmp_path, ["--quick", "--steps", "3"], timeout=240)
    assert result["mode"] == "quick"
    _check_against_single_process(result, _reference(tmp_path, quick=True))


@pytest.mark.slow
def test_two_processes_grpo_steps_save_restore(tmp_path):
    result = _launch_two_processes(tmp_path, ["--steps", "3"], timeout=600)
    assert result["mode"] == "grpo"
    _check_against_single_process(result, _reference(tmp_path, quick=False))


def test_checkpoint_restores_onto_another_mesh_shape(tmp_path):
    """A train state saved sharded on (1, 8, 1) restores onto (2, 2, 2) with the new layout."""
    cfg = decoder.ModelConfig.preset("toy_tiny")
    opt = records.optimizer_config(lr=1e-3)
    # Host-side random params: eager `decoder.init_params` compiles one kernel per leaf (slow here).
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(a.dtype), decoder.abstract_params(cfg)
    )
    host_state = steps.init_train_state(cfg, opt, params)
    # Non-zero Adam moments, so a wrong mapping of mu/nu onto params would show.
    host_state = host_state.replace(
        opt_state=jax.tree.map(lambda x: x + 0.5 if x.ndim else x, host_state.opt_state)
    )

    def state_shardings(mesh_shape):
        mesh = sh.make_mesh(sh.MeshConfig(*mesh_shape))
        abstract = jax.eval_shape(lambda s: s, host_state)
        p = sh.param_shardings(mesh, cfg)
        return abstract, sh.shardings_like_params(abstract, decoder.abstract_params(cfg), p)

    _, saved_shardings = state_shardings((1, 8, 1))
    saved = jax.device_put(host_state, saved_shardings)
    assert saved.params["layers"]["wq"].sharding.spec[1] == "fsdp"
    manager = checkpoints.state_manager(tmp_path / "stage")
    checkpoints.save_state(manager, 7, saved, {"step": 7})

    abstract, target_shardings = state_shardings((2, 2, 2))
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, target_shardings
    )
    restored, meta = checkpoints.restore_latest(manager, target)
    assert meta["step"] == 7
    for got, want, sharding in zip(
        jax.tree.leaves(restored),
        jax.tree.leaves(host_state),
        jax.tree.leaves(target_shardings),
        strict=True,
    ):
        assert got.sharding.is_equivalent_to(sharding, got.ndim)
        if jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(jax.device_get(got), jax.device_get(want))
    # Adam's mu and nu took the (2, 2, 2) layout of the parameter they mirror.
    wq = restored.params["layers"]["wq"]
    moments = [x for x in jax.tree.leaves(restored.opt_state) if x.shape == wq.shape]
    assert len(moments) == 2
    assert wq.sharding.spec == Spec(None, "fsdp", "tensor", None)
    assert all(m.sharding.spec == wq.sharding.spec for m in moments), [m.sharding for m in moments]


PIPELINE_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import shrink_config
from configs import toy_arith


def get_config(arg=None):
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=("student_sft", "direct_grpo"))
    config.export_hf = "direct_grpo"
    config.mesh.update(data=1, fsdp=2, tensor=2)
    return config
"""


def _pipeline_results(workdir: Path) -> dict:
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=22)
    out = {}
    for stage in ("student_sft", "direct_grpo"):
        rows = [
            {k: v for k, v in r.items() if not k.startswith("time/") and not k.endswith("per_s")}
            for r in metrics.read_metrics(workdir / stage)
        ]
        params = checkpoints.load_exported_params(workdir / stage, decoder.abstract_params(cfg))
        out[stage] = (rows, jax.device_get(params))
    return out


@pytest.mark.slow
def test_two_processes_run_pipeline_stages(tmp_path):
    """`main.py --distributed` on 2 processes x 2 devices == `pipeline.run` on 4 local devices."""
    config_file = tmp_path / "config.py"
    config_file.write_text(PIPELINE_CONFIG.format(tests=str(REPO / "tests")))
    (tmp_path / "multi").mkdir()

    def command(address, i):
        return [
            sys.executable,
            "-m",
            "s2d_jax.main",
            f"--config={config_file}",
            f"--workdir={tmp_path / 'multi'}",
            "--distributed",
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={i}",
        ]

    _run_two_processes(tmp_path / "multi", command, timeout=900)
    spec = {"__name__": "pipeline_config"}
    exec(config_file.read_text(), spec)
    pipeline.run(spec["get_config"](), tmp_path / "single", devices=jax.devices()[:4])

    multi, single = _pipeline_results(tmp_path / "multi"), _pipeline_results(tmp_path / "single")
    for stage, (rows, params) in single.items():
        got_rows, got_params = multi[stage]
        assert [r["step"] for r in got_rows] == [1, 2], stage
        for a, b in zip(rows, got_rows, strict=True):
            assert a.keys() == b.keys(), stage
            keys = sorted(a)
            np.testing.assert_allclose(
                [b[k] for k in keys], [a[k] for k in keys], rtol=1e-4, atol=1e-5, err_msg=stage
            )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4), params, got_params
        )
    for name in ("student_sft", "direct_grpo"):  # process 0 wrote eval outputs and DONE
        assert (tmp_path / "multi" / name / "DONE").exists()
        assert (tmp_path / "multi" / name / "eval_final" / "test" / "samples.jsonl").exists()
    assert (tmp_path / "multi" / "export_hf" / "config.json").exists()
    assert (tmp_path / "multi" / "report.md").exists()
