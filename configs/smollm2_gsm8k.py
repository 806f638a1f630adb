"""A real pretrained model on a laptop: SmolLM2-135M-Instruct on GSM8K, evaluation then GRPO, CPU.

    python -m s2d_jax.tools.get_smollm2          # once: fetch + dequantize (about 2 minutes)
    python -m s2d_jax.main --config configs/smollm2_gsm8k.py --workdir runs/smollm2
    python -m s2d_jax.main --config configs/smollm2_gsm8k.py:problems=64,steps=20 --workdir ...

Stages: `before` evaluates the checkpoint on the first `problems` GSM8K test questions (avg@k,
pass@k), `grpo` trains it on GSM8K train with the verifier reward (chat template, `#### N` or
\\boxed{} answers) and evaluates the result the same way. Hardware: 2 CPU cores, float32.
`model_path` defaults to the cache directory of s2d_jax.tools.get_smollm2.
"""

from configs import common
from s2d_jax.tools import get_smollm2


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        model_path=str(get_smollm2.default_dir()),
        problems=32,
        samples=4,
        steps=10,
        prompts=4,
        group=4,
        max_new_tokens=256,
        lr=1e-6,
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
    s.grpo.save_every = 5
    config.stages = s
    config.eval = common.evaluation(
        "gsm8k", samples=arg.samples, max_new_tokens=arg.max_new_tokens, max_problems=arg.problems
    )
    config.eval.batch_size = 16
    config.report_rows = "SmolLM2-135M-Instruct=before,after GRPO=grpo"
    config.export_hf = ""
    return config
