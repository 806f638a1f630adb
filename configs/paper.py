"""The paper's experiments (arXiv 2605.12483, Tables 2-6) with its hyperparameters (Tables 7-8).

    python -m s2d_jax.main --workdir runs/qwen_full --config \\
      configs/paper.py:arm=full,teacher_path=/ckpt/Qwen3-8B,student_path=/ckpt/Qwen3-1.7B,data_path=/data/dapo.parquet

Arms (`arm=`), all with the same machinery, each a choice of stages (`-` marks a stage left out):
  full          Stage 1 teacher GRPO -> 2a forward KL -> 2b on-policy KL          (Table 2 top)
  direct        GRPO on the student with all labels                                 (Tables 1, 2)
  raw           the bridge from the raw (not RL-trained) teacher                    (Table 2)
  no_fkl        Stage 1 -> 2b only (standalone OPD; the "-Stage 2a" row)            (Table 3)
  no_opd        Stage 1 -> 2a only (teacher-sample SFT; the "-Stage 2b" row)        (Table 3)
  half          Stage 1 + bridge on 1H, Stage 3 GRPO on 2H                          (Table 5)
  replay        as half, but Stage 3 replays 1H (same updates and data count)       (Table 5)
  half_no_fkl   Stage 1 on 1H, OPD only on 1H, Stage 3 on 2H                        (Table 5)
  half_no_opd   Stage 1 on 1H, teacher-sample SFT on 1H, Stage 3 on 2H              (Table 5)
  sft_teacher   bridge from an SFT teacher (teacher_path) on 1H, Stage 3 on 2H      (Table 4)
  sft_teacher_replay   as sft_teacher, Stage 3 replaying 1H (the replay control)    (Table 4)
  sft_teacher_full     the bridge from an SFT teacher on the full data             (Table 6)
The report also shows the rows the paper reads from intermediate stages: the teacher after Stage 1
and, for the half-split arms, the bridge before Stage 3 ("-Stage 3"). Every arm but `direct`
evaluates its teacher before any RL (`teacher_base`, an eval stage) for condition C1.
Model pairs (`pair=`): qwen3_8b (Qwen3-8B -> Qwen3-1.7B), qwen3_14b (Qwen3-14B -> Qwen3-1.7B), llama
(Llama-3.3-70B-Instruct -> Llama-3.1-8B-Instruct), qwen3_1.7b_same (a Qwen3-1.7B teacher RL-trained
for its Qwen3-1.7B student: Table 6's same-size rows with arm=full / no_fkl / no_opd), and
one_gpu (Qwen3-1.7B -> Qwen3-0.6B, one tokenizer, sized for one 80 GB GPU: the paper's lengths,
one row per micro-batch in the train steps and the GRPO reference's scoring pass). `python
benchmarks/fit_tables.py --table paper --pairs one_gpu` gives 42.3 GiB for the teacher's GRPO step
(64 rows of 3,072 + 16,384 tokens) and 5.9 GiB for its scoring pass; the student's stages take
at most 19.9 GiB. With the frozen copies beside them (the GRPO reference and the sampler's
weights in bfloat16, about 3.4 GiB each) and the sampler's KV budget (0.4 of the GPU), every
stage fits. A checkpoint whose dimensions
differ from the pair's preset is an error (swapped or wrong paths fail before any compute). Paths
are required: teacher_path and student_path (local Hugging Face checkpoints), data_path
(DAPO-Math-17K parquet/JSONL). A missing one fails before any compute.
Batch semantics: every stage's `mini-batch` is prompts per update, as verl counts it (Tables 7-8:
8 for GRPO, 64 for the transfer stages), with all of each prompt's rollouts: GRPO and 2b update on
prompts x 8 samples, and 2a on 64 prompts' worth of teacher rollouts (512 sequences), so 2a and 2b
take the same number of updates per epoch. `--dry_run` prints each stage's updates and rows.
`split_seed` picks the 1H / 2H split and stays fixed when `seed` (the training's) changes.
Hardware: a TPU pod slice or GPUs (float32 master weights and AdamW state, bfloat16 compute).
The Qwen3 pairs are laid out for 8 chips as (1, 8, 1) and Llama for 64 chips as (1, 16, 4)
(PAIR_SLICE); every stage's batch is split into micro-batches of one row a device, and attention
runs in blocks of ATTENTION_BLOCK tokens. README "Will it fit?" gives the per-device memory of every
stage at the paper's lengths (`python benchmarks/fit_tables.py --table paper`): the qwen3_8b pair
fits 8 x 80 GB chips, the llama pair 64 chips of 95 GiB (TPU v5p-128). Runtime: days.

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
    "qwen3_1.7b_same": ("qwen3_1.7b", "qwen3_1.7b"),
    "one_gpu": ("qwen3_1.7b", "qwen3_0.6b"),
    "tiny": ("tiny_qwen3_teacher", "tiny_qwen3_student"),
}
# pair -> (chips, tensor axis): the slice each pair is sized for (README "Will it fit?"; Llama's
# 70B teacher's GRPO step does not fit 32 chips). fsdp -1 takes the devices the tensor axis leaves.
PAIR_SLICE = {
    "qwen3_8b": (8, 1),
    "qwen3_14b": (8, 1),
    "llama": (64, 4),
    "qwen3_1.7b_same": (8, 1),
    "one_gpu": (1, 1),
    "tiny": (8, 1),  # micro-batches set by _shrink_to_tiny
}
# Training and scoring forwards attend in blocks of this many tokens (s2d_jax/model/attention.py):
# the dense path's [H, T, T] float32 scores of one 19,456-token Qwen3-8B row are 45 GiB a layer.
ATTENTION_BLOCK = 512
# pair=tiny, the laptop twin: random Qwen3-shaped checkpoints written into the run directory, the
# shipped DAPO-layout file, and these sizes; stages, losses, dtypes and eval splits as on a pod.
TINY = dict(steps=2, prompts=2, group=4, rollouts=4, max_new=24, micro_batches=2, problems=2)
ARMS = (
    "full",
    "direct",
    "raw",
    "no_fkl",
    "no_opd",
    "half",
    "replay",
    "half_no_fkl",
    "half_no_opd",
    "sft_teacher",
    "sft_teacher_replay",
    "sft_teacher_full",
)
# Arms whose teacher is given (raw or SFT), so there is no Stage 1; arms with a Stage 3 and where
# it draws from (replay controls reuse 1H); the half-split arms train Stage 1 and the bridge on 1H.
GIVEN_TEACHER = ("raw", "sft_teacher", "sft_teacher_replay", "sft_teacher_full")
STAGE3_DATA = {
    "half": "train_2h",
    "replay": "train_1h",
    "half_no_fkl": "train_2h",
    "half_no_opd": "train_2h",
    "sft_teacher": "train_2h",
    "sft_teacher_replay": "train_1h",
}


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        arm="full",
        pair="qwen3_8b",
        teacher_path="",
        student_path="",
        data_path="",
        seed=0,
        split_seed=0,
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
    mesh = common.mesh(data=1, fsdp=-1, tensor=PAIR_SLICE[arg.pair][1])
    config = common.base(arg.seed, "skip", 2 if tiny else 8, mesh_sizes=mesh)
    # Qwen3 chat template with thinking off (paper code default); DAPO columns need data_path.
    data_path = common.shipped_file("tiny_dapo_math.jsonl") if tiny else arg.data_path
    config.task = common.task(
        "math_train", "chat", train_path=data_path, train_columns="dapo", split_seed=arg.split_seed
    )
    # Float32 master weights for every role (each is trained by some arm), bfloat16 compute.
    dtype = dict(
        dtype="float32",
        compute_dtype="bfloat16",
        random_weights=tiny,
        attention_block=ATTENTION_BLOCK,
    )
    config.models = common.ConfigDict(
        dict(
            teacher=common.model(preset=teacher_preset, hf_path=arg.teacher_path, **dtype),
            student=common.model(preset=student_preset, hf_path=arg.student_path, **dtype),
        )
    )
    config.stages = _stages(arg.arm, micro_batch_rows(arg.pair))
    config.eval = common.evaluation("math500,aime24,aime25", samples=16, max_new_tokens=16384)
    # C2 of every arm on one probe set: rows of the two base checkpoints, so each arm's run (and
    # each seed) reads the same rows.
    config.probe = common.probe("train", "base", "base", max_new_tokens=TRANSFER["max_new"])
    if tiny:
        _shrink_to_tiny(config)
    config.report_rows = _report_rows(arg.arm, config.stages)
    config.export_hf = config.report_rows.split(",")[0].split("=")[1]
    return config


def micro_batch_rows(pair: str) -> int:
    """Rows of one micro-batch on the pair's slice: one a device over data x fsdp, so a step's
    activations are one row's whatever the stage's batch."""
    chips, tensor = PAIR_SLICE[pair]
    return chips // tensor


def _grpo(model, init_from, data, rows):
    stage = common.grpo_stage(
        model, init_from, data, 0, GRPO["prompts"], GRPO["group"], GRPO["max_new"], GRPO["lr"]
    )
    stage.epochs = GRPO["epochs"]
    stage.max_prompt_tokens = GRPO["max_prompt"]
    stage.micro_batches = GRPO["prompts"] * GRPO["group"] // rows
    return stage


def _bridge(stages, teacher, data, rows, fkl=True, opd=True):
    t = TRANSFER
    cap = dict(max_prompt_tokens=t["max_prompt"])
    if fkl:  # batch_size counts teacher rollouts: 64 prompts' worth of them
        stages.fkl = common.forward_kl_stage(
            "base", teacher, data, 0, t["prompts"] * t["rollouts"], t["rollouts"], t["max_new"],
            t["lr"], **cap,
        )  # fmt: skip
        stages.fkl.micro_batches = t["prompts"] * t["rollouts"] // rows
    if opd:  # batch_size counts prompts, each sampled `rollouts` times
        stages.opd = common.on_policy_kl_stage(
            "fkl" if fkl else "base", teacher, data, 0, t["prompts"], t["rollouts"],
            t["max_new"], t["lr"], **cap,
        )  # fmt: skip
        stages.opd.micro_batches = t["prompts"] * t["rollouts"] // rows
    return stages


def _stages(arm, rows):
    """The arm's stages, each split into micro-batches of `rows` rows."""
    s = common.ConfigDict()
    if arm == "direct":
        s.direct_grpo = _grpo("student", "base", "train", rows)
        return s
    half = arm in STAGE3_DATA
    data = "train_1h" if half else "train"
    # C1: the teacher before any RL (the given raw or SFT teacher, or Stage 1's start), evaluated
    # inside every arm that distils from a teacher.
    s.teacher_base = common.eval_stage("teacher", "base")
    teacher = "base"
    if arm not in GIVEN_TEACHER:
        s.teacher_grpo = _grpo("teacher", "base", data, rows)
        teacher = "teacher_grpo"
    _bridge(s, teacher, data, rows, fkl="no_fkl" not in arm, opd="no_opd" not in arm)
    if half:
        s.stage3 = _grpo("student", "opd" if "opd" in s else "fkl", STAGE3_DATA[arm], rows)
    return s


def _report_rows(arm, stages):
    """The arm's final stage, and the rows the paper reads from its intermediate stages."""
    final = "stage3" if "stage3" in stages else "opd" if "opd" in stages else "fkl"
    if arm == "direct":
        final = "direct_grpo"
    rows = [(arm, final)]
    if "stage3" in stages:
        rows.append((f"{arm} -Stage 3", stages.stage3.init_from))
    if "teacher_grpo" in stages:
        rows.append(("teacher after Stage 1", "teacher_grpo"))
    if "teacher_base" in stages:
        rows.append(("teacher before RL", "teacher_base"))
    return ",".join(f"{label}={stage}" for label, stage in rows)


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
    config.probe.update(prompts=t["prompts"], samples=1)
    config.probe.sampling.max_new_tokens = t["max_new"]
