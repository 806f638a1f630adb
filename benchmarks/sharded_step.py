"""Toy GRPO train-step time on 1 fake CPU device and on 8, side by side.

    .venv/bin/python benchmarks/sharded_step.py                 # toy_teacher, 16 rows x 128 tokens
    .venv/bin/python benchmarks/sharded_step.py --preset toy_student --rows 32 --steps 20

The same `steps.jit_train_step` (objective "grpo", AdamW, state donated) runs on one device
without shardings and on meshes of 8 fake CPU devices with explicit shardings (TRAIN_RULES,
rows over data x fsdp). The fake devices share the same CPU cores, so this measures the
overhead of the sharded program (collectives, smaller kernels), not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

MESHES = ((8, 1, 1), (1, 8, 1), (2, 2, 2))


def _setup_devices(n: int) -> None:
    if "jax" not in sys.modules:  # the device count is read when jax starts its backend
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _batch(cfg, rows: int, length: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.ones((rows, length), bool)
    mask[::2, : length // 4] = False  # left-padded prompts on half the rows
    return {
        "tokens": rng.integers(0, cfg.vocab_size, (rows, length)).astype(np.int32),
        "attention_mask": mask,
        "loss_mask": (mask[:, 1:] & mask[:, :-1]).astype(np.float32),
        "old_logprobs": -rng.uniform(1.0, 3.0, (rows, length - 1)).astype(np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
    }


def time_step(step, state, batch, steps: int) -> tuple[float, float]:
    """(first call incl. compile in s, median step in ms) of `steps` timed calls after it."""
    import jax

    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return compile_s, 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy_teacher")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    _setup_devices(8)
    import jax
    import numpy as np

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.learn import steps
    from s2d_jax.model import decoder
    from s2d_jax.tools import fixed_records

    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, jax has {jax.device_count()} (XLA_FLAGS set late?)")
    cfg = decoder.ModelConfig.preset(args.preset, vocab_size=32)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: rng.normal(0, 0.02, a.shape).astype(np.float32), decoder.abstract_params(cfg)
    )
    step_cfg = steps.StepConfig(
        "grpo",
        fixed_records.optimizer_config(1e-4, weight_decay=0.1),
        1,
        chunk_size=256,
        vocab_chunk=8192,
        grpo=fixed_records.grpo_config(0.0),
    )

    def fresh_state():  # a new one per layout: each step donates (deletes) its input state
        return steps.init_train_state(cfg, step_cfg.optimizer, params)

    batch = _batch(cfg, args.rows, args.length)

    rows = []
    device = jax.devices()[0]
    single = steps.jit_train_step(step_cfg, cfg)
    rows.append(
        (
            "1 device",
            *time_step(single, *jax.device_put((fresh_state(), batch), device), args.steps),
        )
    )
    for shape in MESHES:
        mesh = sh.make_mesh(sh.MeshConfig(*shape))
        p_shardings = sh.param_shardings(mesh, cfg)
        abstract = jax.eval_shape(fresh_state)
        s_shardings = sh.shardings_like_params(abstract, decoder.abstract_params(cfg), p_shardings)
        b_sharding = sh.rows_sharding(mesh, args.rows)
        step = steps.jit_train_step(
            step_cfg, cfg, state_sharding=s_shardings, batch_sharding=b_sharding
        )
        state = jax.device_put(fresh_state(), s_shardings)
        timing = time_step(step, state, jax.device_put(batch, b_sharding), args.steps)
        rows.append((f"8 devices {shape} (data, fsdp, tensor)", *timing))

    n_params = decoder.count_params(params)
    print(
        f"{args.preset} ({n_params / 1e6:.2f} M params), GRPO step, {args.rows} rows x "
        f"{args.length} tokens, median of {args.steps} steps; {os.cpu_count()} CPU cores shared "
        "by all fake devices"
    )
    base = rows[0][2]
    print(f"  {'layout':42s} {'1st call (s)':>12s} {'step (ms)':>10s} {'vs 1 device':>12s}")
    for name, compile_s, step_ms in rows:
        print(f"  {name:42s} {compile_s:12.1f} {step_ms:10.1f} {step_ms / base:11.2f}x")


if __name__ == "__main__":
    main()
