"""Eval mode: sample, grade and report a local Hugging Face checkpoint; no training.

    python -m s2d_jax.main --workdir runs/eval_qwen --config \\
      configs/eval.py:model_path=/ckpt/Qwen3-1.7B,sets=math500+aime24+aime25,samples=16

Writes `<workdir>/eval/eval_final/<set>/samples.jsonl` (problem id, completion, extracted answer,
correct) and `summary.json` (avg@k ± SE, pass@1, pass@k, maj@k, per level), and prints a table.
Paper decoding by default (T=0.6, top-p 0.95). `max_problems=N` evaluates the first N problems.
Hardware: an accelerator for real models (bfloat16); `dtype=float32` on CPU.
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        model_path="",
        sets="math500",
        samples=16,
        max_new_tokens=4096,
        temperature=0.6,
        top_p=0.95,
        max_problems=0,
        dtype="bfloat16",
        prompt_style="chat",
        seed=0,
    )
    config = common.base(arg.seed, "raise", 4)
    config.task = common.task("math_train", arg.prompt_style)
    config.models = common.ConfigDict(
        dict(student=common.model(hf_path=arg.model_path, dtype=arg.dtype))
    )
    config.stages = common.ConfigDict(dict(eval=common.eval_stage("student", "base")))
    config.eval = common.evaluation(
        arg.sets.replace("+", ","),
        samples=arg.samples,
        max_new_tokens=arg.max_new_tokens,
        temperature=arg.temperature,
        top_p=arg.top_p,
        max_problems=arg.max_problems,
    )
    config.report_rows = ""
    config.export_hf = ""
    return config
