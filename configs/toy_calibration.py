"""Calibration of the toy task: a ~1M and a ~5M model, each warm-started then trained by GRPO.

    python -m s2d_jax.main --config configs/toy_calibration.py:size=1m --workdir runs/calib_1m
    python -m s2d_jax.main --config configs/toy_calibration.py:size=5m --workdir runs/calib_5m
    python -m s2d_jax.main --config configs/toy_calibration.py:size=5m,scale=0.1 --workdir /tmp/c

The task is configs/toy_arith.py's (common.arith_task). One model (`toy_teacher` ~0.93M or `toy_5m`
~5.2M parameters) is warm-started on the demos split, stopped inside its competence window (the
warm-start stands in for pretraining); then GRPO with the verifier reward on the 256 labeled RL
prompts. The warm-start stage's final evaluation is "before GRPO", the GRPO stage's is "after".
`scale` multiplies every step count; `seed` picks the run.
"""

from configs import common

# Per size: the model and where its warm-start stops on the shared 240-step cosine schedule: at
# the start of its jump from ~10% to ~100% (measured: the 1M model at steps 120 -> 150, the 5M
# model, slower at this lr, at steps 180 -> 210+).
SIZES = {
    "1m": dict(preset="toy_teacher", sft_steps=145),
    "5m": dict(preset="toy_5m", sft_steps=210),
}


def get_config(arg=None):
    arg = common.parse_arg(arg, size="5m", scale=1.0, seed=0)
    if arg.size not in SIZES:
        raise KeyError(f"config argument size={arg.size!r}; expected one of {sorted(SIZES)}")
    size = SIZES[arg.size]
    n = lambda steps: max(2, int(steps * arg.scale))  # noqa: E731
    new = common.ARITH_NEW_TOKENS

    config = common.base(arg.seed, "skip", 2)
    config.task = common.arith_task(arg.seed)
    config.models = common.ConfigDict(dict(teacher=common.model(preset=size["preset"])))
    s = common.ConfigDict()
    # The same 240-step cosine warm-start as configs/toy_arith.py, stopped at `sft_steps`.
    s.sft = common.sft_stage("teacher", "base", "demos", n(size["sft_steps"]), 32, 3e-3)
    s.sft.optim.update(schedule="cosine", warmup_steps=n(20), total_steps=n(240), weight_decay=0.0)
    # The same GRPO for both sizes. Measured: it lowers both (README "Calibration: 1M vs 5M").
    s.grpo = common.grpo_stage("teacher", "sft", "rl", n(40), 16, 8, new, 2e-4)
    config.stages = s
    config.eval = common.evaluation("test", samples=4, max_new_tokens=new, max_problems=256)
    config.report_rows = "warm-started (before GRPO)=sft,after GRPO=grpo"
    config.export_hf = ""
    return config
