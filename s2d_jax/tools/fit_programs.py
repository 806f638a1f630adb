"""Per-device memory of each program the pipeline runs, compiled ahead of time for abstract
inputs on a mesh: the train step, the frozen scoring pass and the sampler's phases.

`tools/fit.py` is the command line over these; its docstring says what each figure counts.
"""

from __future__ import annotations

import functools
import time


def memory_of(compiled) -> dict[str, int]:
    """Bytes of one device from a compiled executable's memory analysis."""
    m = compiled.memory_analysis()
    out = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temps": m.temp_size_in_bytes,
    }
    return out | {"total": total_bytes(out)}


def total_bytes(m: dict) -> int:
    """What one device holds while the program runs: its buffers less those donated."""
    return m["arguments"] + m["outputs"] - m["aliased"] + m["temps"]


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def train_step_memory(model_cfg, mesh, *, batch: int, seq: int, step_cfg, teacher_cfg=None):
    """Compile `steps.jit_train_step` for a [batch, seq] batch on `mesh`; per-device bytes."""
    import jax
    import jax.numpy as jnp

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.learn import steps
    from s2d_jax.model import decoder

    abstract_params = decoder.abstract_params(model_cfg)
    p_shardings = sh.param_shardings(mesh, model_cfg)
    state = jax.eval_shape(
        lambda p: steps.init_train_state(model_cfg, step_cfg.optimizer, p),
        abstract_params,
    )
    state_shardings = sh.shardings_like_params(state, abstract_params, p_shardings)
    B, T = batch, seq
    shapes = {
        "tokens": ((B, T), jnp.int32),
        "attention_mask": ((B, T), jnp.bool_),
        "loss_mask": ((B, T - 1), jnp.float32),
        "old_logprobs": ((B, T - 1), jnp.float32),
        "ref_logprobs": ((B, T - 1), jnp.float32),
        "advantages": ((B,), jnp.float32),
    }
    batch_sharding = sh.rows_sharding(mesh, B)  # as `placement.jit_update` shards the rows
    abstract_batch = {
        k: jax.ShapeDtypeStruct(*shapes[k], sharding=batch_sharding) for k in step_cfg.batch_keys()
    }
    args = [_abstract(state, state_shardings)]
    kwargs = dict(state_sharding=state_shardings, batch_sharding=batch_sharding)
    if teacher_cfg is not None:
        t_shardings = sh.param_shardings(mesh, teacher_cfg)
        args.append(_abstract(decoder.abstract_params(teacher_cfg), t_shardings))
        kwargs["teacher_sharding"] = t_shardings
    args.append(abstract_batch)
    start = time.time()
    step = steps.jit_train_step(step_cfg, model_cfg, teacher_cfg, **kwargs)
    compiled = step.lower(*args).compile()
    return memory_of(compiled) | {"compile_s": round(time.time() - start, 1)}


def score_memory(model_cfg, mesh, *, batch: int, seq: int, chunk_size: int, micro_batches: int):
    """Compile `steps.score_tokens` (a frozen model's log-probs of [batch, seq] rows: the GRPO
    reference's and a tempered sampler's old log-probs) on params in the compute dtype, as
    `stages.frozen_copy` holds them, rows over data x fsdp as `batches.score` puts them."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.learn import steps
    from s2d_jax.model import decoder

    cfg = dataclasses.replace(model_cfg, param_dtype=model_cfg.compute_dtype)
    params = _abstract(decoder.abstract_params(cfg), sh.param_shardings(mesh, cfg))
    rows = sh.rows_sharding(mesh, batch)
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=rows)
    mask = jax.ShapeDtypeStruct((batch, seq), jnp.bool_, sharding=rows)
    start = time.time()
    compiled = steps.score_tokens.lower(
        cfg, params, tokens, mask, chunk_size=chunk_size, micro_batches=micro_batches, mesh=mesh
    ).compile()
    return memory_of(compiled) | {"compile_s": round(time.time() - start, 1)}


def sampler_memory(model_cfg, mesh, *, batch: int, prompt_len: int, cache_len: int):
    """Compile the sampler's own jitted phases, `phases.prefill_jit` ([batch, prompt_len] prompt
    slots, cache_len slots in all) and `phases.decode_loop_jit`; per-device bytes of each.

    They are lowered as `sampler.generate` calls them in the pipeline: per-layer weights laid
    out by SAMPLE_RULES (`placement.sampling_params`), rows split over
    `sharding.BATCH_AXES` (padded like the sampler pads them), and the decode state with
    the shardings the compiled prefill gives it. The decode loop runs every step in the same
    (donated) buffers, so its figure is that of one decode step; it samples at temperature 1
    without top-k / top-p cuts. Whatever the caller keeps alive beside them (a GRPO stage's train
    state, a teacher's frozen params) is not included.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Spec

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.model import cached_forward, decoder
    from s2d_jax.rollout import phases, sampler

    gen_bucket = cache_len - prompt_len
    if gen_bucket < 1:
        raise SystemExit(f"--seq {cache_len} (cache slots) must exceed --prompt_len {prompt_len}")
    p_shardings = sh.param_shardings(mesh, model_cfg, sh.SAMPLE_RULES)
    unstack = functools.partial(cached_forward.unstack_layers, dtype=model_cfg.compute_dtype)
    params = _abstract(
        jax.eval_shape(unstack, decoder.abstract_params(model_cfg)),
        sh.per_layer_shardings(p_shardings, model_cfg.n_layers),
    )
    data_axis = sh.BATCH_AXES
    rows = NamedSharding(mesh, Spec(data_axis))
    B = sampler.padded_rows(batch, mesh, data_axis)
    prompt = jax.ShapeDtypeStruct((B, prompt_len), jnp.int32, sharding=rows)
    prompt_mask = jax.ShapeDtypeStruct((B, prompt_len), jnp.bool_, sharding=rows)
    active = jax.ShapeDtypeStruct((B,), jnp.bool_, sharding=rows)
    statics = dict(cfg=model_cfg, gen_bucket=gen_bucket, mesh=mesh, data_axis=data_axis)
    start = time.time()
    # seed, max_new_tokens and pad_id as `sampler.prefill` passes them: NumPy and Python scalars.
    lowered = phases.prefill_jit.lower(
        params, prompt, prompt_mask, active, np.uint32(0), gen_bucket, 0, **statics
    )
    prefill = lowered.compile()
    out = {"prefill": memory_of(prefill) | {"compile_s": round(time.time() - start, 1)}}

    settings = sampler.make_settings(
        model_cfg, temperature=1.0, top_p=1.0, top_k=0, eos_id=0, pad_id=0
    )
    state = _abstract(lowered.out_info, prefill.output_shardings).replace(settings=settings)
    start = time.time()
    decode = phases.decode_loop_jit.lower(state, params, cfg=model_cfg).compile()
    out["decode_step"] = memory_of(decode) | {"compile_s": round(time.time() - start, 1)}
    return out
