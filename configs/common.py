"""Config fragments shared by the experiment files: models, stages, evaluation, argument parsing.

Each function returns a plain ConfigDict; experiments compose them. Every key a stage may use is
declared here, so a typo on the command line or in a config fails loudly (lock_config=True).
"""

from pathlib import Path

import ml_collections

ConfigDict = ml_collections.ConfigDict
# The data files that ship in the package (configs live beside it in the repository).
SHIPPED_FILES = Path(__file__).resolve().parent.parent / "s2d_jax" / "data" / "files"


def shipped_file(name):
    """The path of a data file that ships in the package, e.g. "tiny_dapo_math.jsonl"."""
    return str(SHIPPED_FILES / name)


def parse_arg(arg, **defaults):
    """`"a=1,b=x"` -> ConfigDict with the defaults' types (big_vision style variants)."""
    result = ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise KeyError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        result[key] = _parse_bool(key, value) if kind is bool else kind(value)
    return result


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _parse_bool(key, value):
    """A boolean config argument: only these forms, so a typo never reads as False."""
    if value.lower() not in _TRUE + _FALSE:
        raise ValueError(
            f"config argument {key}={value!r}: expected one of {', '.join(_TRUE + _FALSE)}"
        )
    return value.lower() in _TRUE


def base(seed, nan_policy="skip", grader_workers=2, mesh_sizes=None):
    """The run-level keys every experiment sets: seed, NaN policy, grader pool, device mesh."""
    config = ConfigDict()
    config.seed = seed
    config.nan_policy = nan_policy  # "skip" a non-finite step (counted) or "raise"
    config.grader_workers = grader_workers
    config.grader_timeout_s = 5.0
    config.mesh = mesh_sizes or mesh()
    config.probe = probe("", "base", "base", max_new_tokens=1)  # no probe set: C2 not measured
    return config


def task(name, prompt_style, *, train_path="", train_columns="", split_seed=0, arith=None):
    """The data task: its dataset (pools, see s2d_jax/data/task.py) and prompt format."""
    return ConfigDict(
        dict(
            name=name,
            train_path=train_path,
            train_columns=train_columns,
            prompt_style=prompt_style,
            enable_thinking=False,  # Qwen3 thinking off, as the paper's code
            split_seed=split_seed,
            arith=arith or {},
        )
    )


def arith_task(seed, num_demos=2000, num_rl=256, num_test=512, misconceived_facts=0.3):
    """The built-in toy task: chains of 2-6 `+b`/`-b` (b in 1-3) mod 10, worked solutions.

    The demos teach 30% of the 60 facts wrongly half of the time (s2d_jax/data/toy_arith.py), so
    a warm-started model stays well below saturation and the verifier's reward has facts to fix.
    """
    return task(
        "arith",
        "raw",
        arith=dict(
            ops=("+", "-"),
            operands=(1, 2, 3),
            modulus=10,
            min_ops=2,
            max_ops=6,
            seed=seed,
            num_demos=num_demos,
            num_rl=num_rl,
            num_test=num_test,
            misconceived_facts=misconceived_facts,
            misconception_rate=0.5,
        ),
    )


ARITH_NEW_TOKENS = 48  # the longest toy solution is 40 tokens


def model(
    preset="",
    hf_path="",
    dtype="float32",
    compute_dtype="",
    random_weights=False,
    attention_block=0,
):
    """One model role: a local Hugging Face checkpoint (`hf_path`), or a toy `preset` (fresh init).

    With both, the checkpoint must have the preset's dimensions (catches swapped paths).
    `dtype` is the params' dtype as loaded: float32 for a role any stage trains (its master
    weights); `compute_dtype` ("" = dtype) is what the forward passes run in, bfloat16 on
    accelerators. `random_weights`: a random checkpoint of `preset` is written into the run
    directory and loaded from there (the laptop twin of a launch; s2d_jax/workflow/random_models.py).
    `attention_block` > 0: the training and scoring forward attend in blocks of that many tokens
    (s2d_jax/model/attention.py), never holding a [T, T] score array; 0 materialises the scores.
    """
    return ConfigDict(
        dict(
            preset=preset,
            hf_path=hf_path,
            dtype=dtype,
            compute_dtype=compute_dtype,
            random_weights=random_weights,
            attention_block=attention_block,
        )
    )


def optim(lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.1, grad_clip=1.0):
    """AdamW (0.9, 0.999, eps 1e-8) as in the paper's Tables 7-8; constant LR by default."""
    return ConfigDict(
        dict(
            lr=lr,
            schedule=schedule,
            warmup_steps=warmup_steps,
            total_steps=0,  # the cosine's length; 0: the stage's number of updates
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
        )
    )


# Tokens per chunk of the full-vocabulary terms (training, scoring, C2): memory ~ chunk x vocabulary.
CHUNK_SIZE = 512
# The rollout engine of every sampler call (stages and evaluation). kv_budget_gib is the KV cache
# per data shard the continuous engine's slot pool is sized from; 0 takes the device's default
# (0.4 of an accelerator's memory, 2 GiB on a CPU: `rollout/engine.default_kv_budget_bytes`).
# decode_attention "pallas_gpu" / "pallas_tpu" reads each row's own filled length on that device
# (s2d_jax/model/decode_kernels.py); "reference", the pure-JAX path, runs everywhere.
ROLLOUT_ENGINE = dict(engine="continuous", kv_budget_gib=0.0, decode_attention="reference")


def sampling(max_new_tokens, temperature=1.0, top_p=1.0, top_k=0):
    return ConfigDict(
        dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            **ROLLOUT_ENGINE,
        )
    )


def _stage(kind, model, init_from, data, steps, batch_size, max_new_tokens, lr, **extra):
    stage = dict(
        kind=kind,
        model=model,  # "teacher" | "student": architecture and tokenizer role
        init_from=init_from,  # "base" | name of an earlier stage | a Hugging Face directory
        teacher="",  # distillation stages: "base" | earlier stage name | HF directory
        data=data,  # prompt pool: a split name of the task (e.g. "rl", "rl_1h", "train")
        max_prompt_tokens=0,  # longer prompts are dropped from the pool (counted); 0: no cap
        steps=steps,  # optimizer updates; 0 means `epochs` passes over the pool
        epochs=1,
        batch_size=batch_size,  # prompts per step (grpo, on_policy_kl) or sequences (sft, forward_kl)
        micro_batches=1,  # gradient accumulation: one update over this many micro-batches
        save_every=25,
        eval_every=0,  # 0: evaluate only when the stage ends
        loss="",  # the objective; "" = the kind's first (s2d_jax/workflow/stages.py KINDS)
        samples_per_prompt=1,  # G for grpo; K teacher rollouts for forward_kl; student samples for OPD
        sampling=sampling(max_new_tokens),
        optim=optim(lr=lr),
        grpo=grpo(),
        stop=stop(),
        chunk_size=CHUNK_SIZE,
        vocab_chunk=8192,  # vocabulary slice of their backward pass (0: the whole vocabulary)
        max_skipped_frac=0.1,  # nan_policy "skip": more skipped steps than this share fail
        max_consecutive_skips=3,  # ... as do more skipped steps than this in a row
    )
    stage.update(extra)
    return ConfigDict(stage)


def grpo(
    clip_eps=0.2,
    clip_eps_high=0.0,
    kl_coef=5e-4,
    kl_estimator="k3",
    aggregation="token",
    format_reward=0.0,
):
    """GRPO objective knobs (paper Table 7; clip_eps_high 0 means symmetric clipping;
    format_reward > 0 rewards a wrong but extractable answer, off in the paper)."""
    return ConfigDict(
        dict(
            clip_eps=clip_eps,
            clip_eps_high=clip_eps_high,
            kl_coef=kl_coef,
            kl_estimator=kl_estimator,
            aggregation=aggregation,  # "token" | "sequence" | "dr_grpo"
            dr_grpo_max_len=0,  # Dr. GRPO's constant normaliser; 0: the batch's T - 1
            normalize_std=True,
            format_reward=format_reward,
        )
    )


def stop(accuracy=0.0, every=10, holdout=0):
    """When an sft stage ends early (accuracy 0: never, it runs its `steps`): every `every`
    updates, the greedy accuracy on `holdout` examples held out of its pool (chosen by the task's
    split_seed, never trained on); the first check at or above `accuracy` ends the stage, and
    `steps` becomes an upper bound."""
    return ConfigDict(dict(accuracy=accuracy, every=every, holdout=holdout))


def sft_stage(model, init_from, data, steps, batch_size, lr, max_new_tokens=0, **extra):
    """Supervised warm-start on worked solutions (the toy's stand-in for pretraining);
    max_new_tokens is only sampled by an early stop's check (`stop`)."""
    return _stage("sft", model, init_from, data, steps, batch_size, max_new_tokens, lr, **extra)


def grpo_stage(model, init_from, data, steps, prompts, group_size, max_new_tokens, lr, **extra):
    """Stage 1 (teacher) or Stage 3 / direct baseline (student): GRPO with a verifier reward."""
    return _stage(
        "grpo",
        model,
        init_from,
        data,
        steps,
        prompts,
        max_new_tokens,
        lr,
        samples_per_prompt=group_size,
        **extra,
    )


def forward_kl_stage(
    init_from, teacher, data, steps, batch_size, rollouts, max_new_tokens, lr, **extra
):
    """Stage 2a: the student learns KL(teacher || student) on cached teacher rollouts."""
    return _stage(
        "forward_kl",
        "student",
        init_from,
        data,
        steps,
        batch_size,
        max_new_tokens,
        lr,
        teacher=teacher,
        samples_per_prompt=rollouts,
        **extra,
    )


def on_policy_kl_stage(
    init_from, teacher, data, steps, prompts, samples, max_new_tokens, lr, **extra
):
    """Stage 2b: student rollouts, frozen teacher scores every token, per-token reverse KL."""
    return _stage(
        "on_policy_kl",
        "student",
        init_from,
        data,
        steps,
        prompts,
        max_new_tokens,
        lr,
        teacher=teacher,
        samples_per_prompt=samples,
        **extra,
    )


def eval_stage(model, init_from):
    """No training: sample, grade and report `init_from` on config.eval (the eval mode)."""
    return _stage("eval", model, init_from, "", 0, 1, 0, 0.0)


def evaluation(splits, samples, max_new_tokens, temperature=0.6, top_p=0.95, max_problems=0):
    """avg@k / pass@k / maj@k on the named splits; paper default decoding T=0.6, top-p 0.95."""
    return ConfigDict(
        dict(
            splits=splits,  # comma-separated split names of the task
            samples=samples,  # k
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            **ROLLOUT_ENGINE,
            max_problems=max_problems,  # 0: all
            batch_size=64,  # prompts per sampler call
        )
    )


def probe(data, teacher, student, max_new_tokens, prompts=16, samples=2):
    """The probe set of condition C2 (s2d_jax/workflow/probe.py): `prompts` prompts of pool
    `data`, each sampled `samples` times at T = 1 by the teacher at reference `teacher` and the
    student at `student`; KL(T||S), KL(S||T) and the variance of log(pT/pS) on it at every
    stage boundary of the student. data "": off."""
    return ConfigDict(
        dict(
            data=data,
            prompts=prompts,
            samples=samples,
            teacher=teacher,
            student=student,
            sampling=sampling(max_new_tokens),
            chunk_size=CHUNK_SIZE,
        )
    )


def mesh(data=-1, fsdp=1, tensor=1):
    """Device mesh sizes; -1 takes the remaining devices."""
    return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
