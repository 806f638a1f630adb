"""Calibration of the toy task: a ~1M and a ~5M model, each warm-started then trained by GRPO.

    python -m s2d_jax.main --config configs/toy_calibration.py:size=1m --workdir runs/calib_1m
    python -m s2d_jax.main --config configs/toy_calibration.py:size=5m --workdir runs/calib_5m
    python -m s2d_jax.main --config configs/toy_calibration.py:size=5m,scale=0.1 --workdir /tmp/c

The task is configs/toy_arith.py's (common.arith_task, whose demos teach 30% of the facts wrongly
half of the time). One model (`toy_teacher` ~0.93M or `toy_5m` ~5.2M parameters) is warm-started
on the demos split for the full 240-step cosine schedule (the warm-start stands in for pretraining;
both sizes land near the ~45% that the misconceptions leave); then GRPO with the verifier reward on
the 256 labeled RL prompts. The warm-start stage's final evaluation is "before GRPO", the GRPO
stage's is "after"; both stages also evaluate on the way (`eval_every`), for the curve.
`scale` multiplies every step count; `seed` picks the run.
"""

from configs import common

PRESETS = {"1m": "toy_teacher", "5m": "toy_5m"}


def get_config(arg=None):
    arg = common.parse_arg(arg, size="5m", scale=1.0, seed=0)
    if arg.size not in PRESETS:
        raise KeyError(f"config argument size={arg.size!r}; expected one of {sorted(PRESETS)}")
    n = lambda steps: max(2, int(steps * arg.scale))
    new = common.ARITH_NEW_TOKENS

    config = common.base(arg.seed, "skip", 2)
    config.task = common.arith_task(arg.seed)
    config.models = common.ConfigDict(dict(teacher=common.model(preset=PRESETS[arg.size])))
    s = common.ConfigDict()
    # The same 240-step cosine warm-start as configs/toy_arith.py's teacher.
    s.sft = common.sft_stage("teacher", "base", "demos", n(240), 32, 3e-3, eval_every=n(60))
    s.sft.optim.update(schedule="cosine", warmup_steps=n(20), total_steps=n(240), weight_decay=0.0)
    # The same GRPO for both sizes (and as configs/toy_arith.py's teacher GRPO).
    s.grpo = common.grpo_stage("teacher", "sft", "rl", n(40), 16, 8, new, 1e-4, eval_every=n(10))
    config.stages = s
    config.eval = common.evaluation("test", samples=4, max_new_tokens=new, max_problems=256)
    config.report_rows = "warm-started (before GRPO)=sft,after GRPO=grpo"
    config.export_hf = ""
    return config
