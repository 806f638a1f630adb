"""The paper's experiments (arXiv 2605.12483, Tables 2-6) with its hyperparameters (Tables 7-8).

    python -m s2d_jax.main --workdir runs/qwen_full --config \\
      configs/paper.py:arm=full,teacher_path=/ckpt/Qwen3-8B,student_path=/ckpt/Qwen3-1.7B,data_path=/data/dapo.parquet

Arms (`arm=`), all with the same machinery, each a choice of stages:
  full        Stage 1 teacher GRPO -> 2a forward KL -> 2b on-policy KL            (Table 2 top)
  direct      GRPO on the student with all labels                                   (Table 1 / 2)
  raw         bridge from the raw (not RL-trained) teacher                          (Table 6)
  no_fkl      Stage 1 -> 2b only (standalone OPD; the "-Stage 2a" row)
  no_opd      Stage 1 -> 2a only (teacher-sample forward KL; the "-Stage 2b" row)
  half        Stage 1 + bridge on 1H, Stage 3 GRPO on 2H                            (Table 5)
  replay      as half, but Stage 3 replays 1H (same updates and data count)         (Table 5)
  sft_teacher bridge from an SFT teacher given by teacher_path, then Stage 3 on 2H  (Table 4)
Model pairs (`pair=`): qwen3_8b (Qwen3-8B -> Qwen3-1.7B), qwen3_14b (Qwen3-14B -> Qwen3-1.7B), llama
(Llama-3.3-70B-Instruct -> Llama-3.1-8B-Instruct); a checkpoint whose dimensions differ from the
pair's preset is an error (swapped or wrong paths fail before any compute). Paths are required:
teacher_path and student_path (local Hugging Face checkpoints), data_path (DAPO-Math-17K
parquet/JSONL). A missing one fails before any compute.
Hardware: a TPU pod slice or GPUs (float32 master weights and AdamW state, bfloat16 compute).
The Qwen3 pairs are laid out for 8 chips as (1, 8, 1) and Llama for 32 chips as (1, 8, 4); every
stage's batch is split into micro-batches of one row a device. README "Will it fit?" gives the
per-device memory at 4,096 tokens a row. At the paper's 16k-token responses the train step does
not fit yet: attention materialises its scores. Runtime: days.

pair=tiny is the laptop twin of any arm: the same stage chain, losses and dtypes on random tiny
Qwen3-shaped checkpoints (written into the workdir, one chat tokenizer), the shipped DAPO-layout
file s2d_jax/data/files/tiny_dapo_math.jsonl, 2 steps a stage, on CPU in a few minutes:
    python -m s2d_jax.main --config configs/paper.py:arm=full,pair=tiny --workdir runs/tiny_full
"""

from configs import common

# Paper Table 7 (GRPO: direct, Stage 3) and Table 8 (OPD / transfer stages). `max_prompt` is
# their max prompt length: longer prompts are dropped from a stage's pool (counted in the report).
GRPO = dict(lr=1e-6, prompts=8, group=8, max_new=16384, max_prompt=3072, epochs=10)
TRANSFER = dict(lr=1e-6, prompts=64, rollouts=8, max_new=16384, max_prompt=2048, epochs=1)
# pair -> (teacher preset, student preset): the checkpoints given must have these dimensions.
PAIRS = {
    "qwen3_8b": ("qwen3_8b", "qwen3_1.7b"),
    "qwen3_14b": ("qwen3_14b", "qwen3_1.7b"),
    "llama": ("llama3_70b", "llama3_8b"),
    "tiny": ("tiny_qwen3_teacher", "tiny_qwen3_student"),
}
# The slice each pair is sized for (README "Will it fit?"): Qwen3 pairs on 8 chips as (1, 8, 1),
# Llama on 32 chips as (1, 8, 4); fsdp -1 takes the devices the other axes leave.
PAIR_TENSOR = {"qwen3_8b": 1, "qwen3_14b": 1, "llama": 4, "tiny": 1}
# Rows of one micro-batch: one row a device over data x fsdp (8 on the slices above), so a step's
# activations are one row's whatever the stage's batch; a stage accumulates rows / 8 of them.
MICRO_BATCH_ROWS = 8
# pair=tiny, the laptop twin: random Qwen3-shaped checkpoints written into the run directory, the
# shipped DAPO-layout file, and these sizes; stages, losses, dtypes and eval splits as on a pod.
TINY = dict(steps=2, prompts=2, group=4, rollouts=4, max_new=24, micro_batches=2, problems=2)
ARMS = ("full", "direct", "raw", "no_fkl", "no_opd", "half", "replay", "sft_teacher")


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        arm="full",
        pair="qwen3_8b",
        teacher_path="",
        student_path="",
        data_path="",
        seed=0,
    )
    if arg.arm not in ARMS:
        raise ValueError(f"arm={arg.arm!r}; expected one of {ARMS}")
    if arg.pair not in PAIRS:
        raise ValueError(f"pair={arg.pair!r}; expected one of {sorted(PAIRS)}")
    tiny = arg.pair == "tiny"
    if tiny and (arg.teacher_path or arg.student_path or arg.data_path):
        raise ValueError(
            "pair=tiny writes its own random checkpoints and reads a shipped file: "
            "give no teacher_path, student_path or data_path"
        )
    teacher_preset, student_preset = PAIRS[arg.pair]
    mesh = common.mesh(data=1, fsdp=-1, tensor=PAIR_TENSOR[arg.pair])
    config = common.base(arg.seed, "skip", 2 if tiny else 8, mesh_sizes=mesh)
    # Qwen3 chat template with thinking off (paper code default); DAPO columns need data_path.
    data_path = common.shipped_file("tiny_dapo_math.jsonl") if tiny else arg.data_path
    config.task = common.task(
        "math_train", "chat", train_path=data_path, train_columns="dapo", split_seed=arg.seed
    )
    # Float32 master weights for every role (each is trained by some arm), bfloat16 compute.
    dtype = dict(dtype="float32", compute_dtype="bfloat16", random_weights=tiny)
    config.models = common.ConfigDict(
        dict(
            teacher=common.model(preset=teacher_preset, hf_path=arg.teacher_path, **dtype),
            student=common.model(preset=student_preset, hf_path=arg.student_path, **dtype),
        )
    )
    config.stages = _stages(arg.arm)
    config.eval = common.evaluation("math500,aime24,aime25", samples=16, max_new_tokens=16384)
    if tiny:
        _shrink_to_tiny(config)
    config.report_rows = f"{arg.arm}={_final_stage(arg.arm)}"
    config.export_hf = _final_stage(arg.arm)
    return config


def _grpo(model, init_from, data):
    stage = common.grpo_stage(
        model, init_from, data, 0, GRPO["prompts"], GRPO["group"], GRPO["max_new"], GRPO["lr"]
    )
    stage.epochs = GRPO["epochs"]
    stage.max_prompt_tokens = GRPO["max_prompt"]
    stage.micro_batches = GRPO["prompts"] * GRPO["group"] // MICRO_BATCH_ROWS
    return stage


def _bridge(stages, teacher, data, fkl=True, opd=True):
    t = TRANSFER
    cap = dict(max_prompt_tokens=t["max_prompt"])
    if fkl:
        stages.fkl = common.forward_kl_stage(
            "base", teacher, data, 0, t["prompts"], t["rollouts"], t["max_new"], t["lr"], **cap
        )
    if opd:
        stages.opd = common.on_policy_kl_stage(
            "fkl" if fkl else "base",
            teacher,
            data,
            0,
            t["prompts"],
            t["rollouts"],
            t["max_new"],
            t["lr"],
            **cap,
        )
    if fkl:  # batch_size counts teacher rollouts (sequences)
        stages.fkl.micro_batches = t["prompts"] // MICRO_BATCH_ROWS
    if opd:  # batch_size counts prompts, each sampled `rollouts` times
        stages.opd.micro_batches = t["prompts"] * t["rollouts"] // MICRO_BATCH_ROWS
    return stages


def _stages(arm):
    s = common.ConfigDict()
    if arm == "direct":
        s.direct_grpo = _grpo("student", "base", "train")
        return s
    if arm == "raw":
        return _bridge(s, "base", "train")
    if arm == "sft_teacher":  # teacher_path is the SFT teacher: no Stage 1
        _bridge(s, "base", "train_1h")
        s.stage3 = _grpo("student", "opd", "train_2h")
        return s
    half = arm in ("half", "replay")
    s.teacher_grpo = _grpo("teacher", "base", "train_1h" if half else "train")
    _bridge(
        s, "teacher_grpo", "train_1h" if half else "train", fkl=arm != "no_fkl", opd=arm != "no_opd"
    )
    if half:
        s.stage3 = _grpo("student", "opd", "train_2h" if arm == "half" else "train_1h")
    return s


def _shrink_to_tiny(config):
    """The pod config at laptop size: only counts and lengths change."""
    t = TINY
    for stage in config.stages.values():
        stage.steps = t["steps"]
        stage.sampling.max_new_tokens = t["max_new"]
        stage.batch_size = t["prompts"]
        stage.samples_per_prompt = t["group"] if stage.kind == "grpo" else t["rollouts"]
        stage.micro_batches = t["micro_batches"]
    config.eval.update(samples=2, max_new_tokens=t["max_new"], max_problems=t["problems"])


def _final_stage(arm):
    return {
        "direct": "direct_grpo",
        "no_opd": "fkl",
        "half": "stage3",
        "replay": "stage3",
        "sft_teacher": "stage3",
    }.get(arm, "opd")
