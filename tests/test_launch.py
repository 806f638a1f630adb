"""Launch tooling: the TPU VM scripts (dry runs + shellcheck) and the "will it fit?" command."""

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("create.sh", "run.sh", "logs.sh", "delete.sh")


def _dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """The commands a script prints with --dry-run, each split back into its words."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    out = subprocess.run(
        ["bash", str(REPO / "launch_tpu" / script), "--dry-run", *args],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def _flag(words: list[str], name: str) -> str:
    values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, words)
    return values[0]


def test_create_prints_the_gcloud_command():
    (cmd,) = _dry_run("create.sh", "--name", "s2d", "--zone", "us-central2-b", "--type", "v4-32")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "s2d"]
    assert _flag(cmd, "zone") == "us-central2-b"
    assert _flag(cmd, "accelerator-type") == "v4-32"
    assert _flag(cmd, "version") == "tpu-ubuntu2204-base"
    assert "--spot" not in cmd and not any(w.startswith("--project") for w in cmd)
    (cmd,) = _dry_run(
        "create.sh",
        "--spot",
        env={"TPU_NAME": "e", "TPU_ZONE": "z", "TPU_TYPE": "v5litepod-8", "TPU_PROJECT": "p"},
    )
    assert cmd[5] == "e" and _flag(cmd, "version") == "v2-alpha-tpuv5-lite"
    assert _flag(cmd, "project") == "p" and "--spot" in cmd


def test_run_copies_sets_up_and_starts_on_all_workers():
    workdir = "/mnt/shared/runs/it's here"  # quoting survives the remote shell
    cmds = _dry_run(
        "run.sh",
        "--name",
        "s2d",
        "--zone",
        "z",
        "--config",
        "configs/toy_arith.py:scale=0.1",
        "--workdir",
        workdir,
        "--",
        "--extra=1",
    )
    tar, scp, setup, start = cmds
    assert tar[:2] == ["tar", "-czf"] and str(REPO) in tar and "--exclude=./.venv" in tar
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == tar[2] and scp[6] == "s2d:~/s2d_jax.tgz" and "--worker=all" in scp
    for cmd in (setup, start):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "s2d"]
        assert "--worker=all" in cmd and _flag(cmd, "zone") == "z"
    assert 'pip install -q -e ".[tpu]"' in _flag(setup, "command")
    assert "python3 -m venv .venv" in _flag(setup, "command")
    remote = shlex.split(_flag(start, "command"))  # what the worker's shell runs
    main = remote[remote.index("nohup") + 1 : remote.index(">")]
    assert main == [
        ".venv/bin/python",
        "-m",
        "s2d_jax.main",
        "--distributed",
        "--config=configs/toy_arith.py:scale=0.1",
        f"--workdir={workdir}",
        "--extra=1",
    ]
    assert remote[:3] == ["cd", "~/s2d_jax", "&&"]


def test_run_no_setup_and_stop():
    base = ["--name", "s2d", "--zone", "z"]
    cmds = _dry_run(
        "run.sh", *base, "--config", "configs/toy_arith.py", "--workdir", "/w", "--no-setup"
    )
    assert len(cmds) == 1 and "s2d_jax.main" in _flag(cmds[0], "command")
    (stop,) = _dry_run("run.sh", *base, "--stop")
    assert "kill" in _flag(stop, "command") and "--worker=all" in stop


def test_logs_and_delete():
    (logs,) = _dry_run("logs.sh", "--name", "s2d", "--zone", "z", "--worker", "3", "--lines", "20")
    assert logs[4] == "ssh" and _flag(logs, "worker") == "3"
    assert _flag(logs, "command") == "tail -n 20 -F ~/s2d_jax_run.log"
    (delete,) = _dry_run("delete.sh", "--name", "s2d", "--zone", "z")
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "s2d"]
    assert "--quiet" not in delete  # gcloud asks unless --yes
    (delete,) = _dry_run("delete.sh", "--name", "s2d", "--zone", "z", "--yes")
    assert "--quiet" in delete


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("create.sh", ["--name", "a", "--zone", "z"], "--type"),
        ("delete.sh", ["--zone", "z"], "--name"),
        ("logs.sh", ["--name", "a", "--zone", "z", "--lines", "x"], "--lines"),
        ("run.sh", ["--name", "a", "--zone", "z", "--workdir", "/w"], "--config"),
        (
            "run.sh",
            ["--name", "a", "--zone", "z", "--config", "nope.py", "--workdir", "/w"],
            "nope.py",
        ),
        ("run.sh", ["--name", "a", "--zone", "z", "--bogus"], "--bogus"),
    ],
)
def test_scripts_reject_bad_arguments(script, args, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    result = subprocess.run(
        ["bash", str(REPO / "launch_tpu" / script), "--dry-run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "gcloud" not in result.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    paths = [str(REPO / "launch_tpu" / s) for s in (*SCRIPTS, "common.sh")]
    # -x follows each script's `source` of common.sh; run from the root its directive names.
    result = subprocess.run(
        ["shellcheck", "-x", *paths], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- fit


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fit_command_reports_per_device_memory(tmp_path, dtype):
    """The CLI on 4 fake devices: arguments match the per-device bytes counted from the layout.
    In bfloat16 compute the train state is still float32 (masters, AdamW moments); the
    sampler's weights and KV cache are bfloat16."""
    out = tmp_path / "fit.json"
    cmd = [sys.executable, "-m", "s2d_jax.tools.fit", "--preset", "toy_tiny", "--devices", "4"]
    cmd += ["--mesh", "1,2,2", "--batch", "4", "--seq", "32", "--prompt_len", "16"]
    cmd += ["--dtype", dtype, "--hbm_gib", "1", "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train step (grpo, batch 4 x 32" in result.stdout and "fits" in result.stdout
    report = json.loads(out.read_text())
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}

    # toy_tiny (vocab 64, d 32, 4 heads, 2 kv heads x 8, mlp 64, 2 layers, q/k norms, untied):
    # on fsdp=2 x tensor=2 a weight with an `embed` dim is halved, and again with a heads / mlp /
    # vocab dim; norms are whole. Params, Adam mu and nu: 3 copies, float32.
    L, D, H, K, Dh, F, V = 2, 32, 4, 2, 8, 64, 64
    quarter = [V * D, D * V] + [L * D * n * Dh for n in (H, K, K, H)] + [L * D * F] * 3
    whole = [D] + [L * D] * 2 + [L * Dh] * 2
    param_bytes = 4 * (sum(quarter) / 4 + sum(whole))
    rows = 4 // 2  # batch rows per device: data x fsdp = 2
    batch_bytes = rows * (32 * 4 + 32 + 31 * 4 * 2 + 4)  # tokens, mask, loss_mask, old_lp, adv
    train = report["train_step"]
    assert math.isclose(train["arguments"], 3 * param_bytes + batch_bytes, abs_tol=256)
    assert train["aliased"] >= 3 * param_bytes  # the donated state is updated in place
    assert train["temps"] > 0 and train["total"] >= train["arguments"]
    # Sampler: weights replicated over fsdp (SAMPLE_RULES), halved by tensor where named; the
    # KV cache [L, B, S, K, Dh] x 2 split over rows (2) and kv heads (2); both in compute dtype.
    itemsize = {"float32": 4, "bfloat16": 2}[dtype]
    sample_params = itemsize * (sum(quarter) / 2 + sum(whole))
    cache = 2 * itemsize * L * 4 * 32 * K * Dh / 4
    decode = report["decode_step"]  # the sampler's decode loop
    assert decode["arguments"] >= sample_params + cache
    assert decode["arguments"] < sample_params + cache + 4096  # + the rest of the decode state
    # The decode state is donated, its cache included; the weights are not.
    assert cache <= decode["aliased"] <= decode["arguments"] - sample_params
    assert report["prefill"]["outputs"] >= cache  # the prefill makes the cache


def test_fit_refuses_a_running_jax_with_other_device_count():
    from s2d_jax.tools import fit

    with pytest.raises(RuntimeError, match="--devices 3"):
        fit._use_fake_cpu_devices(3)  # conftest already started jax with 8 devices


@pytest.mark.slow  # three compiles: 4.5 min on 2 shared cores beside another compile
def test_fit_blocked_attention_and_micro_batches_lower_the_train_step():
    """At a long row the dense path's [H, T, T] scores dominate the temporaries; blocked attention
    removes them. Micro-batches hold one part of the batch's activations at a time."""
    import dataclasses

    import jax

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.model import decoder
    from s2d_jax.tools import fit, fit_programs

    mesh = sh.make_mesh(sh.MeshConfig(1, 2, 1), jax.devices()[:2])
    args = fit.parse_args(["--preset", "toy_tiny"])
    dense = decoder.ModelConfig.preset("toy_tiny")
    blocked = dataclasses.replace(dense, attention_block=128)

    def temps(cfg, micro_batches):
        step_cfg = dataclasses.replace(fit._step_config(args), micro_batches=micro_batches)
        m = fit_programs.train_step_memory(cfg, mesh, batch=8, seq=1024, step_cfg=step_cfg)
        return m["temps"]

    scores_per_device = 4 * 4 * 1024 * 1024 * 4  # 4 rows x 4 heads x T x T float32
    assert temps(dense, 1) - temps(blocked, 1) > scores_per_device / 2
    assert temps(blocked, 4) < temps(blocked, 1) / 2


def test_fit_scoring_pass_in_micro_batches_holds_one_part():
    """The frozen scoring pass (a GRPO reference's log-probs) in the stage's micro-batches holds
    one part's activations: what lets a long-row GRPO stage score on the chip it trains on."""
    import jax

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.model import decoder
    from s2d_jax.tools import fit_programs

    mesh = sh.make_mesh(sh.MeshConfig(1, 2, 1), jax.devices()[:2])
    cfg = decoder.ModelConfig.preset("toy_tiny")

    def temps(micro_batches):
        m = fit_programs.score_memory(
            cfg, mesh, batch=16, seq=512, chunk_size=128, micro_batches=micro_batches
        )
        return m["temps"]

    assert temps(4) < temps(1) / 2
