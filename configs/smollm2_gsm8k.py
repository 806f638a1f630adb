"""A real pretrained model on a laptop: SmolLM2-135M-Instruct on GSM8K, evaluation then GRPO, CPU.

    SMOLLM2=$(python -m s2d_jax.tools.get_smollm2)   # once: fetch + dequantize (about 2 minutes)
    python -m s2d_jax.main --config configs/smollm2_gsm8k.py:model_path=$SMOLLM2 --workdir runs/smollm2
    python -m s2d_jax.main --config configs/smollm2_gsm8k.py:model_path=$SMOLLM2,problems=64,steps=20 ...

Stages: `before` evaluates the checkpoint on the first `problems` GSM8K test questions (avg@k,
pass@k, answered = format rate), `grpo` trains it on GSM8K train with the verifier reward (chat
template, `#### N` or \\boxed{} answers) and evaluates the result the same way. Hardware: 2 CPU
cores, float32. `model_path` is the directory that s2d_jax.tools.get_smollm2 prints.

The defaults are the run reported in README.md, sized to ~40 minutes on 2 shared CPU cores:
- lr 2e-5, not the paper's 1e-6: with a few steps, 1e-6 moves a 135M model by nothing
  measurable; Adam's first steps move every weight by about lr, so 2e-5 is a visible but
  still small step (the k3 KL to the start and the 0.2 clip still bound it).
- training temperature 0.6 (the eval's), not 1.0: at 1.0 this model writes incoherent text and
  never reaches a final answer, so every group's reward is 0 and GRPO has no signal at all.
- 192 new tokens: most coherent GSM8K solutions of this model fit; a truncated one earns 0.
- format_reward 0.2 (off in the paper's configs): a wrong answer the grader can extract
  (\\boxed{} or `#### N`) earns 0.2. This model ends with "The answer is 48." and almost never
  writes \\boxed{}, so with the correctness reward alone every group scored 0 and GRPO had no
  gradient at all (measured: 6 steps of 2 x 4 rollouts, reward 0 throughout).
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        model_path="",  # required: the directory `python -m s2d_jax.tools.get_smollm2` prints
        problems=32,
        samples=2,
        steps=8,
        prompts=2,
        group=4,
        max_new_tokens=192,
        lr=2e-5,
        temperature=0.6,
        format_reward=0.2,
        seed=0,
    )
    config = common.base(arg.seed, "skip", 2)
    config.task = common.task("gsm8k", "chat")
    config.models = common.ConfigDict(
        dict(student=common.model(preset="smollm2_135m", hf_path=arg.model_path))
    )
    s = common.ConfigDict()
    s.before = common.eval_stage("student", "base")
    s.grpo = common.grpo_stage(
        "student", "base", "train", arg.steps, arg.prompts, arg.group, arg.max_new_tokens, arg.lr
    )
    s.grpo.sampling.temperature = arg.temperature
    s.grpo.grpo.format_reward = arg.format_reward
    # A checkpoint holds params + two Adam moments (1.6 GB here): write one at the end only.
    s.grpo.save_every = max(arg.steps, 1)
    config.stages = s
    config.eval = common.evaluation(
        "gsm8k", samples=arg.samples, max_new_tokens=arg.max_new_tokens, max_problems=arg.problems
    )
    config.eval.batch_size = 16
    config.report_rows = "SmolLM2-135M-Instruct=before,after GRPO=grpo"
    config.export_hf = ""
    return config
