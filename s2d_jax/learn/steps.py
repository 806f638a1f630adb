"""Train state and the jitted update steps of every stage; frozen-model scoring.

One update is `train_step(state, batch, *, cfg, model_cfg)`; the objectives that need the frozen
teacher's full distribution or log-probs use `distill_step(state, teacher_params, batch, *, cfg,
model_cfg, teacher_cfg)`. Both are pure module-level functions of a `TrainState` pytree; jit them
with `jit_train_step`, which donates the state.

Batch (causal LM convention: position t scores token t+1, so per-token arrays are [B, T-1]):
    tokens [B, T] int32, attention_mask [B, T] bool, loss_mask [B, T-1] (which targets count)
    grpo:               old_logprobs [B, T-1], advantages [B], ref_logprobs [B, T-1] if kl_coef
    sampled_reverse_kl: old_logprobs [B, T-1] (teacher log-probs are computed in the step)
What is optimised is `objectives.OBJECTIVES[cfg.objective]`; logits are never materialised for
the whole batch (the objectives go through `kl_chunked`).

    step_cfg = StepConfig("grpo", optimizer_cfg, micro_batches=8, chunk_size=512,
                          vocab_chunk=8192, grpo=grpo_cfg)      # workflow/stages.py builds it
    state = init_train_state(model_cfg, optimizer_cfg, params)
    step = jit_train_step(step_cfg, model_cfg)
    state, metrics = step(state, batch)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from s2d_jax.learn import kl_chunked, optimizer
from s2d_jax.learn.objectives import OBJECTIVES, GrpoConfig
from s2d_jax.learn.optimizer import OptimizerConfig
from s2d_jax.model import decoder


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 []: attempted updates, skipped ones included (the data position)


def init_train_state(
    model_cfg: decoder.ModelConfig, opt_cfg: OptimizerConfig, params
) -> TrainState:
    """A fresh state whose params are float32 master copies of `params` (any float dtype).

    The copy matters even in float32: the steps donate the state, and the caller's arrays (e.g.
    the same params serving as the GRPO reference) must stay valid."""
    want = jax.tree.map(lambda x: x.shape, decoder.abstract_params(model_cfg))
    got = jax.tree.map(lambda x: x.shape, params)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
        raise ValueError(
            "init_train_state: params do not match the ModelConfig (shapes of "
            "decoder.abstract_params(model_cfg)); was the right checkpoint loaded?"
        )
    masters = jax.tree.map(lambda x: jnp.array(x, dtype=optimizer.MASTER_DTYPE, copy=True), params)
    return TrainState(
        masters, optimizer.make_optimizer(opt_cfg).init(masters), jnp.zeros((), jnp.int32)
    )


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What one update optimises. Hashable: a static argument of the jitted step."""

    objective: str  # a key of objectives.OBJECTIVES
    optimizer: OptimizerConfig
    micro_batches: int  # gradient accumulation: B is split into this many equal parts
    chunk_size: int  # tokens per chunk of the full-vocabulary terms
    vocab_chunk: int  # vocabulary slice of their backward pass (0: the whole vocabulary)
    grpo: GrpoConfig | None = None  # read by the grpo objective only

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"StepConfig.objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.objective == "grpo" and self.grpo is None:
            raise ValueError("StepConfig: the grpo objective needs its GrpoConfig (grpo=...)")
        if self.micro_batches < 1:
            raise ValueError(f"StepConfig.micro_batches must be >= 1, got {self.micro_batches}")

    @property
    def needs_teacher(self) -> bool:
        return OBJECTIVES[self.objective].needs_teacher

    def batch_keys(self) -> tuple[str, ...]:
        """The batch entries this objective reads."""
        return ("tokens", "attention_mask", "loss_mask") + OBJECTIVES[self.objective].batch_keys(
            self
        )


def _hidden(model_cfg, params, batch):
    """Hidden states [B, T-1, D] that score targets [B, T-1], and the unembedding [D, V]."""
    hidden_BTD = decoder.forward_hidden(model_cfg, params, batch["tokens"], batch["attention_mask"])
    return hidden_BTD[:, :-1], decoder.unembedding(model_cfg, params)


def _normaliser(cfg: StepConfig, batch) -> jax.Array:
    """The denominator of the objective's mean over this batch: micro-batch gradients weighted by
    their share of it sum to the gradient of the whole batch."""
    return OBJECTIVES[cfg.objective].normaliser(cfg, batch["loss_mask"])


def split_micro_batches(x_B, M: int):
    """[B, ...] -> [M, B / M, ...]. Micro-batch i takes rows i, i+M, i+2M, ...: a batch sharded in
    contiguous blocks over the data axis then gives every device its share of each micro-batch,
    with no resharding."""
    B = x_B.shape[0]
    return jnp.swapaxes(x_B.reshape((B // M, M) + x_B.shape[1:]), 0, 1)


def merge_micro_batches(x_M):
    """The inverse of `split_micro_batches`: [M, B / M, ...] -> [B, ...] in the original rows."""
    return jnp.swapaxes(x_M, 0, 1).reshape((-1,) + x_M.shape[2:])


def _loss_and_grads(params, teacher_params, batch, cfg, model_cfg, teacher_cfg):
    """(loss, metrics), grads of the objective over the batch, accumulated over micro-batches."""
    objective = OBJECTIVES[cfg.objective]

    def loss_fn(params, batch):
        teacher = None
        if objective.needs_teacher:  # frozen: never differentiated
            teacher = jax.lax.stop_gradient(_hidden(teacher_cfg, teacher_params, batch))
        return objective.loss(cfg, _hidden(model_cfg, params, batch), teacher, batch)

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    M = cfg.micro_batches
    if M == 1:
        return value_and_grad(params, batch)
    B = batch["tokens"].shape[0]
    if B % M:
        raise ValueError(f"batch size {B} is not a multiple of StepConfig.micro_batches = {M}")

    micro_batches = jax.tree.map(lambda x: split_micro_batches(x, M), batch)
    total = jnp.maximum(_normaliser(cfg, batch), 1.0)

    def body(acc, micro_batch):
        (loss, metrics), grads = value_and_grad(params, micro_batch)
        weight = _normaliser(cfg, micro_batch) / total
        acc = jax.tree.map(lambda a, g: a + weight * g.astype(jnp.float32), acc, grads)
        return acc, (weight, loss, metrics)

    acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, (weights_M, loss_M, metrics_M) = jax.lax.scan(body, acc0, micro_batches)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return (jnp.sum(weights_M * loss_M), _combine_metrics(metrics_M, weights_M)), grads


def _combine_metrics(metrics_M: dict, weights_M: jax.Array) -> dict:
    """Micro-batch metrics [M] -> one value: counts summed, maxima maxed, the rest weighted means."""
    out = {}
    for key, values in metrics_M.items():
        if key.endswith("/tokens"):
            out[key] = jnp.sum(values)
        elif "_max" in key:
            out[key] = jnp.max(values)
        else:
            out[key] = jnp.sum(weights_M * values) / jnp.maximum(jnp.sum(weights_M), 1e-30)
    return out


def _update(state: TrainState, teacher_params, batch, cfg, model_cfg, teacher_cfg):
    missing = [key for key in cfg.batch_keys() if key not in batch]
    if missing:
        raise KeyError(f"objective {cfg.objective!r} needs batch entries {missing}")
    batch = {key: batch[key] for key in cfg.batch_keys()}
    (loss, metrics), grads = _loss_and_grads(
        state.params, teacher_params, batch, cfg, model_cfg, teacher_cfg
    )
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.make_optimizer(cfg.optimizer).update(
        grads, state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    # The change as applied (rounded into the masters), not as the optimizer proposed it. A finite
    # norm of new - old (old finite) also says every new parameter is finite.
    update_norm = optax.global_norm(
        jax.tree.map(
            lambda n, o: n.astype(jnp.float32) - o.astype(jnp.float32), params, state.params
        )
    )
    update_ok = jnp.isfinite(update_norm) & _all_finite(opt_state)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & update_ok
    # A step that is not finite throughout is skipped: select the old arrays bit for bit.
    keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = state.replace(
        params=keep_old(params, state.params),
        opt_state=keep_old(opt_state, state.opt_state),
        step=state.step + 1,
    )
    metrics |= {
        "train/loss": loss,
        "train/grad_norm": grad_norm,
        "train/update_norm": jnp.where(ok, update_norm, 0.0),
        "train/param_norm": optax.global_norm(new_state.params),
        "train/nonfinite_update": 1.0 - update_ok.astype(jnp.float32),
        "train/skipped": 1.0 - ok.astype(jnp.float32),
        "train/lr": optimizer.learning_rate(new_state.opt_state),
    }
    return new_state, metrics


def _all_finite(tree) -> jax.Array:
    """bool []: every floating-point leaf of `tree` is finite (integer counters are skipped)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train_step(state: TrainState, batch: dict, *, cfg: StepConfig, model_cfg: decoder.ModelConfig):
    """One update of an objective that needs no teacher model (grpo, sft, forward_kl_hard)."""
    if cfg.needs_teacher:
        raise ValueError(f"objective {cfg.objective!r} needs the teacher: use distill_step")
    return _update(state, None, batch, cfg, model_cfg, None)


def distill_step(
    state: TrainState,
    teacher_params,
    batch: dict,
    *,
    cfg: StepConfig,
    model_cfg: decoder.ModelConfig,
    teacher_cfg: decoder.ModelConfig,
):
    """One update of forward_kl / reverse_kl / sampled_reverse_kl against the frozen teacher."""
    if not cfg.needs_teacher:
        raise ValueError(f"objective {cfg.objective!r} takes no teacher: use train_step")
    if teacher_cfg.vocab_size != model_cfg.vocab_size:
        raise ValueError(
            f"teacher vocab_size {teacher_cfg.vocab_size} != student vocab_size "
            f"{model_cfg.vocab_size}: distillation needs a shared tokenizer"
        )
    return _update(state, teacher_params, batch, cfg, model_cfg, teacher_cfg)


def jit_train_step(
    cfg: StepConfig,
    model_cfg: decoder.ModelConfig,
    teacher_cfg: decoder.ModelConfig | None = None,
    *,
    state_sharding=None,
    batch_sharding=None,
    teacher_sharding=None,
    compiler_options: dict | None = None,
):
    """The jitted step with the state donated: (state, batch) -> (state, metrics), or
    (state, teacher_params, batch) for objectives that need the teacher.

    Shardings (NamedSharding pytrees, or one sharding for a whole argument) are optional; give
    all of those the step's arguments need, or none (then they follow the inputs).
    `compiler_options` go to XLA (e.g. {"xla_backend_optimization_level": 0} compiles faster).
    """
    if cfg.needs_teacher:
        if teacher_cfg is None:
            raise ValueError(f"objective {cfg.objective!r} needs teacher_cfg")
        fn = functools.partial(distill_step, cfg=cfg, model_cfg=model_cfg, teacher_cfg=teacher_cfg)
        in_shardings = (state_sharding, teacher_sharding, batch_sharding)
    else:
        fn = functools.partial(train_step, cfg=cfg, model_cfg=model_cfg)
        in_shardings = (state_sharding, batch_sharding)
    kwargs = {"compiler_options": compiler_options}
    if any(s is not None for s in in_shardings):
        if any(s is None for s in in_shardings):
            raise ValueError(
                "jit_train_step: give a sharding for every argument of the step, or none"
            )
        kwargs |= {"in_shardings": in_shardings, "out_shardings": (state_sharding, None)}
        fn = _under_mesh(fn, batch_sharding.mesh)
    return jax.jit(fn, donate_argnames=("state",), **kwargs)


def _mesh_context(mesh):
    """Trace under `mesh` (None: no mesh), so the decoder keeps activation rows split over it
    (`decoder.constrain_rows`)."""
    if mesh is None:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _under_mesh(fn, mesh):
    """`fn` traced under `mesh`; it keeps its signature for jit's donate_argnames."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with _mesh_context(mesh):
            return fn(*args, **kwargs)

    return traced


# ----------------------------------------------------------------------------- frozen models


@functools.partial(jax.jit, static_argnames=("cfg", "chunk_size", "micro_batches", "mesh"))
def score_tokens(
    cfg: decoder.ModelConfig,
    params,
    tokens,
    attention_mask,
    *,
    chunk_size: int,
    micro_batches: int = 1,
    mesh=None,
):
    """Log-prob [B, T-1] float32 of tokens[:, 1:] under a frozen model; tokens/mask [B, T].

    No gradient; runs where params and tokens live (sharded inputs give a sharded computation).
    `micro_batches`: the rows are scored in this many parts in sequence (a scan, split as the
    train step splits them), so the activations held are one part's, as in the train step.
    `mesh` (that of the sharded inputs): activations keep their rows split over it.
    """

    def score(tokens_BT, mask_BT):
        batch = {"tokens": tokens_BT, "attention_mask": mask_BT}
        with _mesh_context(mesh):
            hidden_BTD, w_DV = _hidden(cfg, params, batch)
        # No gradient flows, so the backward pass's vocabulary slicing does not matter.
        return kl_chunked.token_logprobs_chunked(
            hidden_BTD, w_DV, tokens_BT[:, 1:], chunk_size=chunk_size, vocab_chunk=0
        )

    M = micro_batches
    if M == 1:
        return jax.lax.stop_gradient(score(tokens, attention_mask))
    if tokens.shape[0] % M:
        raise ValueError(f"batch size {tokens.shape[0]} is not a multiple of micro_batches = {M}")
    parts = (split_micro_batches(tokens, M), split_micro_batches(attention_mask, M))
    _, logprobs_MBT = jax.lax.scan(lambda _, part: (None, score(*part)), None, parts)
    return jax.lax.stop_gradient(merge_micro_batches(logprobs_MBT))


@functools.partial(jax.jit, static_argnames=("student_cfg", "teacher_cfg", "chunk_size"))
def score_kl(
    student_cfg: decoder.ModelConfig,
    student_params,
    teacher_cfg: decoder.ModelConfig,
    teacher_params,
    tokens,
    attention_mask,
    *,
    chunk_size: int,
) -> dict[str, jax.Array]:
    """Per-token diagnostics [B, T-1] of two frozen models on the same sequences [B, T]:
    "forward" KL(teacher || student), "reverse" KL(student || teacher), "student_entropy",
    "student_logprob", "teacher_logprob" (of tokens[:, 1:]). Reduce with `losses.kl_metrics`."""
    batch = {"tokens": tokens, "attention_mask": attention_mask}
    h_s, w_s = _hidden(student_cfg, student_params, batch)
    h_t, w_t = _hidden(teacher_cfg, teacher_params, batch)
    return kl_chunked.kl_token_stats_chunked(
        h_s, w_s, h_t, w_t, tokens[:, 1:], grad=None, chunk_size=chunk_size, vocab_chunk=0
    )
