"""Every config in configs/ builds, validates, and runs shrunk to tiny random models and data.

The paper's configs need local Hugging Face checkpoints and a DAPO file: tiny random Qwen3
checkpoints with a tiny chat tokenizer and a DAPO-shaped JSONL are made here.
"""

import dataclasses
import importlib
import json
import math
import pathlib
import pkgutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import shrink_config
from test_data import build_hf_tokenizer

import configs
from configs import eval as eval_config
from configs import paper, smollm2_gsm8k, toy_arith, toy_calibration
from s2d_jax.distributed import sharding
from s2d_jax.model import decoder, hf_io
from s2d_jax.workflow import metrics, pipeline


def test_every_config_file_is_covered():
    names = {m.name for m in pkgutil.iter_modules(configs.__path__)} - {"common"}
    expected = {"toy_arith", "toy_calibration", "paper", "eval", "smollm2_gsm8k"}
    assert names == expected, "add the new config here"
    for name in names:
        assert importlib.import_module(f"configs.{name}").__doc__.count("python -m s2d_jax.main")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random teacher and student Qwen3 checkpoints sharing a chat tokenizer, and DAPO rows."""
    root = tmp_path_factory.mktemp("paper")
    tok_dir = root / "tok"
    tokenizer = build_hf_tokenizer(str(tok_dir))
    vocab = tokenizer.get_vocab_size()
    paths = {}
    for role, preset in (("teacher", "toy_tiny"), ("student", "toy_tiny")):
        cfg = decoder.ModelConfig.preset(preset, vocab_size=vocab)
        path = root / role
        hf_io.save_hf(path, cfg, decoder.init_params(cfg, jax.random.key(len(role))))
        for f in tok_dir.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        paths[role] = str(path)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i}+{i}?"}],
            "reward_model": {"ground_truth": str(2 * i)},
            "extra_info": {"index": str(i)},
        }
        for i in range(12)
    ]
    data = root / "dapo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["data"] = str(data)
    return paths


def _paper(arm, paths, **extra):
    arg = f"arm={arm},teacher_path={paths['teacher']},student_path={paths['student']},"
    arg += f"data_path={paths['data']}"
    config = paper.get_config(arg)
    for role in config.models:
        config.models[role].preset = ""  # tiny checkpoints, not the paper's sizes
    config.eval.splits = "math500"
    return shrink_config(config, **extra)


PAPER_CAPS = {"grpo": 3072, "forward_kl": 2048, "on_policy_kl": 2048}


@pytest.mark.parametrize("arm", paper.ARMS)
def test_paper_arms_validate(arm, checkpoints):
    plan = pipeline.validate(_paper(arm, checkpoints))
    kinds = [s.kind for s in plan.stages]
    assert ("grpo" in kinds) == (arm not in ("raw", "sft_teacher_full"))
    assert ("forward_kl" in kinds) == (arm != "direct" and "no_fkl" not in arm)
    assert ("on_policy_kl" in kinds) == (arm != "direct" and "no_opd" not in arm)
    caps = {s.kind: s.max_prompt_tokens for s in plan.stages if s.kind != "eval"}
    assert caps == {k: c for k, c in PAPER_CAPS.items() if k in kinds}  # the paper's lengths
    # C1: every arm with a teacher evaluates it before any RL (its checkpoint, "base").
    evals = [(s.name, s.model, s.init_from) for s in plan.stages if s.kind == "eval"]
    assert evals == ([] if arm == "direct" else [("teacher_base", "teacher", "base")])
    if arm in paper.STAGE3_DATA:
        last = [s for s in plan.stages if s.kind != "eval"][-1]
        assert last.name == "stage3" and last.data == paper.STAGE3_DATA[arm]
    rows = dict(item.split("=")[::-1] for item in plan.report_rows.split(","))
    assert ("teacher_grpo" in rows) == (arm not in paper.GIVEN_TEACHER + ("direct",))
    assert ("teacher_base" in rows) == (arm != "direct")


def test_paper_transfer_stages_take_the_same_updates_per_epoch():
    """Mini-batch 64 is prompts per update in both 2a and 2b (verl units): 2a updates on 64
    prompts' worth of teacher rollouts, 2b on 64 prompts x 8 samples."""
    config = paper.get_config("arm=full")
    fkl, opd = config.stages.fkl, config.stages.opd
    assert fkl.batch_size == fkl.samples_per_prompt * opd.batch_size == 512
    pool = 17_398  # the DAPO-Math-17K prompts
    assert math.ceil(pool * fkl.samples_per_prompt / fkl.batch_size) == math.ceil(
        pool / opd.batch_size
    )


@pytest.mark.parametrize("pair", [p for p in paper.PAIRS if p != "tiny"])
def test_paper_micro_batches_hold_one_row_a_device_of_the_pairs_slice(pair):
    """What README "Will it fit?" measures per pair: on the chips the pair is sized for, every
    trained stage's micro-batch is one row per data x fsdp shard (2a counts rollouts, the others
    prompts x samples)."""
    config = paper.get_config(f"arm=half,pair={pair}")
    chips, tensor = paper.PAIR_SLICE[pair]
    data, fsdp, mesh_tensor = sharding.MeshConfig(**config.mesh).shape(chips)
    assert mesh_tensor == tensor
    for stage in config.stages.values():
        if stage.kind == "eval":
            continue
        rows = stage.batch_size * (1 if stage.kind == "forward_kl" else stage.samples_per_prompt)
        assert rows == stage.micro_batches * data * fsdp, stage.kind


def test_the_half_split_does_not_follow_the_training_seed():
    a, b = paper.get_config("arm=half,seed=0"), paper.get_config("arm=half,seed=3")
    assert a.task.split_seed == b.task.split_seed == 0
    assert paper.get_config("arm=half,split_seed=2").task.split_seed == 2


def test_paper_config_requires_paths():
    with pytest.raises(ValueError, match=r"config\.models\.(teacher|student)\.hf_path is required"):
        pipeline.validate(paper.get_config("arm=full"))


def test_paper_config_requires_data_path(checkpoints):
    config = _paper("full", checkpoints)
    config.task.train_path = ""
    with pytest.raises(ValueError, match=r"config\.task\.train_path is required"):
        pipeline.validate(config)


def test_paper_pair_dimensions_are_checked(checkpoints):
    config = paper.get_config(
        f"arm=direct,teacher_path={checkpoints['teacher']},student_path={checkpoints['student']},"
        f"data_path={checkpoints['data']}"
    )
    with pytest.raises(ValueError, match="is not a qwen3_1.7b checkpoint"):
        pipeline.validate(config)


def test_a_model_vocabulary_smaller_than_the_tokenizer_fails_at_validation(checkpoints, tmp_path):
    """Token ids past the embedding would fail only when sampling reaches one: caught up front."""
    teacher = pathlib.Path(checkpoints["teacher"])
    cfg, params = hf_io.load_hf(teacher)
    small = dataclasses.replace(cfg, vocab_size=cfg.vocab_size - 8)
    params = dict(params, embed=params["embed"][:-8])
    if "lm_head" in params:
        params["lm_head"] = params["lm_head"][:, :-8]
    hf_io.save_hf(tmp_path / "small", small, params)
    for f in teacher.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (tmp_path / "small" / f.name).write_bytes(f.read_bytes())
    config = _paper("raw", dict(checkpoints, teacher=str(tmp_path / "small")))
    with pytest.raises(
        ValueError, match=rf"teacher: the model's vocabulary \({small.vocab_size} ids"
    ):
        pipeline.validate(config)


def test_paper_half_split_runs(checkpoints, tmp_path):
    """Stage 1 on 1H, bridge, Stage 3 on 2H: every stage kind on HF checkpoints + chat template."""
    summaries = pipeline.run(_paper("half", checkpoints, new_tokens=6), tmp_path)
    assert list(summaries) == ["teacher_base", "teacher_grpo", "fkl", "opd", "stage3"]
    assert "eval/math500/avg@2" in summaries["stage3"]
    assert (tmp_path / "export_hf" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arm", [a for a in paper.ARMS if a != "half"])
def test_paper_arms_run(arm, checkpoints, tmp_path):
    summaries = pipeline.run(_paper(arm, checkpoints, new_tokens=6), tmp_path)
    assert all("eval/math500/avg@2" in s for s in summaries.values())


def assert_every_step_trained(workdir, stage_cfgs):
    """Every training stage logged finite losses, no skipped step and a parameter change > 0."""
    for stage in (s.name for s in stage_cfgs if s.kind != "eval"):
        rows = metrics.read_metrics(workdir / stage)
        assert rows, stage
        for row in rows:
            where = (stage, row["step"])
            assert np.isfinite(row["train/loss"]) and np.isfinite(row["train/grad_norm"]), where
            assert row["train/skipped"] == 0.0 and row["train/update_norm"] > 0, where


def run_tiny_arm(arm, workdir):
    config = paper.get_config(f"arm={arm},pair=tiny")
    plan = pipeline.validate(config)
    summaries = pipeline.run(config, workdir)
    assert list(summaries) == [s.name for s in plan.stages]
    assert_every_step_trained(workdir, plan.stages)
    final = summaries[config.export_hf]
    assert {"eval/math500/avg@2", "eval/aime24/avg@2", "eval/aime25/avg@2"} <= set(final)
    exported = json.loads((workdir / "export_hf" / "config.json").read_text())
    assert exported["torch_dtype"] == "float32"  # the float32 masters, not a bfloat16 copy
    return summaries


def test_paper_full_arm_runs_tiny_in_paper_dtypes(tmp_path):
    """`configs/paper.py:arm=full,pair=tiny`: the pod config's stage chain, losses and dtypes
    (float32 masters, bfloat16 compute) on random tiny Qwen3 checkpoints, teacher larger."""
    summaries = run_tiny_arm("full", tmp_path)
    student = json.loads((tmp_path / "random_models" / "student" / "config.json").read_text())
    teacher = json.loads((tmp_path / "random_models" / "teacher" / "config.json").read_text())
    assert teacher["hidden_size"] > student["hidden_size"]
    assert "| opd | teacher_grpo |" in (tmp_path / "report.md").read_text()  # C2 at opd
    fkl = summaries["fkl"]  # C1 on D: 4 graded teacher rollouts of every kept prompt
    assert fkl["c1/teacher_rows"] == 4 * (fkl["data/pool_size"] - fkl["data/prompts_dropped"])
    assert "eval/math500/avg@2" in summaries["teacher_base"]  # the teacher before Stage 1
    assert "| fkl | train | teacher_grpo |" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("arm", [a for a in paper.ARMS if a != "full"])
def test_paper_arm_runs_tiny(arm, tmp_path):
    run_tiny_arm(arm, tmp_path)


@pytest.mark.slow
def test_toy_calibration_1m_improves_under_grpo(tmp_path):
    """The calibration the toy task is built for (README "Calibration: 1M vs 5M"), at full size on
    one device (~5 min on 2 idle cores): the warm-started 1M model stays well below saturation and
    GRPO lifts it by many standard errors (measured 43.7% -> 81.0%)."""
    summaries = pipeline.run(toy_calibration.get_config("size=1m"), tmp_path, jax.devices()[:1])
    before, after = (summaries[s]["eval/test/avg@4"] for s in ("sft", "grpo"))
    assert 0.25 < before < 0.6
    assert after > before + 0.15


def test_eval_config_runs(checkpoints, tmp_path, capsys):
    config = eval_config.get_config(f"model_path={checkpoints['student']},dtype=float32")
    config = shrink_config(config, new_tokens=6)
    summaries = pipeline.run(config, tmp_path)
    assert summaries["eval"]["eval/math500/problems"] == 4
    assert (tmp_path / "eval" / "eval_final" / "math500" / "samples.jsonl").exists()
    assert "eval/math500/avg@2" in capsys.readouterr().out


def test_smollm2_config_validates_and_names_missing_checkpoint(tmp_path):
    config = smollm2_gsm8k.get_config(f"model_path={tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="missing"):
        pipeline.validate(config)


def test_smollm2_config_runs_on_a_tiny_llama(tmp_path, checkpoints):
    """The real-model config with its checkpoint swapped for a tiny random Llama."""
    cfg = decoder.ModelConfig.preset(
        "toy_tiny",
        vocab_size=decoder.ModelConfig.from_hf_config(
            hf_io.read_hf_config(checkpoints["student"])
        ).vocab_size,
        family="llama",
        qk_norm=False,
        max_seq_len=2048,  # the tiny byte-level tokenizer makes GSM8K chat prompts long
    )
    path = tmp_path / "llama"
    hf_io.save_hf(path, cfg, decoder.init_params(cfg, jax.random.key(3)))
    for f in Path(checkpoints["student"]).iterdir():
        if "token" in f.name or f.name == "chat_template.jinja":
            (path / f.name).write_bytes(f.read_bytes())
    config = smollm2_gsm8k.get_config(f"model_path={path}")
    config.models.student.preset = ""
    summaries = pipeline.run(shrink_config(config, new_tokens=6), tmp_path / "run")
    assert "eval/gsm8k/avg@2" in summaries["grpo"] and "eval/gsm8k/avg@2" in summaries["before"]


def test_toy_config_variants():
    full = toy_arith.get_config()
    assert "stage3" in full.stages and full.stages.student_sft.steps == 480
    small = toy_arith.get_config("scale=0.1,stage3=false")
    assert "stage3" not in small.stages and small.stages.student_sft.steps == 48
    on_policy = ("raw_opd", "opd", "opd_no_fkl", "opd_1h")
    assert {full.stages[name].optim.lr for name in on_policy} == {1e-4}
    fast = toy_arith.get_config("opd_lr=0.001")
    assert {fast.stages[name].optim.lr for name in on_policy} == {1e-3}
    assert fast.stages.fkl.optim.lr == full.stages.fkl.optim.lr
    with pytest.raises(KeyError, match="stage_3"):
        toy_arith.get_config("stage_3=false")
    pipeline.validate(full)


def test_calibration_config_sizes_and_shrunk_run(tmp_path):
    """Both sizes validate on the toy task of configs/toy_arith.py; a shrunk 1M run goes
    warm-start -> GRPO and reports both rows."""
    for size, preset in (("1m", "toy_teacher"), ("5m", "toy_5m")):
        config = toy_calibration.get_config(f"size={size}")
        assert config.models.teacher.preset == preset
        assert config.task == toy_arith.get_config().task
        plan = pipeline.validate(config)
        assert [(s.name, s.kind, s.init_from) for s in plan.stages] == [
            ("sft", "sft", "base"),
            ("grpo", "grpo", "sft"),
        ]
    with pytest.raises(KeyError, match="size='2m'"):
        toy_calibration.get_config("size=2m")
    summaries = pipeline.run(shrink_config(toy_calibration.get_config("size=1m")), tmp_path)
    assert "eval/test/avg@2" in summaries["sft"] and "eval/test/avg@2" in summaries["grpo"]
    report = (tmp_path / "report.md").read_text()
    assert "warm-started (before GRPO)" in report and "after GRPO" in report


def _tiny_with(path, value):
    """`configs/paper.py:arm=full,pair=tiny` with the field at `path` (a key sequence) set."""
    config = paper.get_config("arm=full,pair=tiny")
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


@pytest.mark.parametrize(
    "override, message",
    [
        (("stages", "fkl", "steps", -3), r"config\.stages\.fkl\.steps = -3; expected >= 0"),
        (("stages", "fkl", "batch_size", 0), r"config\.stages\.fkl\.batch_size = 0; expected >= 1"),
        (
            ("stages", "fkl", "max_prompt_tokens", -1),
            r"config\.stages\.fkl\.max_prompt_tokens = -1; expected >= 0",
        ),
        (("stages", "opd", "optim", "lr", -1.0), r"config\.stages\.opd\.optim\.lr = -1\.0"),
        (("stages", "opd", "optim", "lr", 0.0), r"a on_policy_kl stage needs lr > 0"),
        (
            ("stages", "opd", "sampling", "top_p", 1.5),
            r"sampling\.top_p = 1\.5; expected in \(0, 1\]",
        ),
        (("stages", "teacher_grpo", "grpo", "kl_coef", -0.1), r"grpo\.kl_coef = -0\.1"),
        (("eval", "max_problems", -1), r"config\.eval\.max_problems = -1; expected >= 0"),
        (
            ("stages", "opd", "sampling", "engine", "paged"),
            r"sampling\.engine = 'paged'; expected one of \('continuous', 'static'\)",
        ),
        (("eval", "kv_budget_gib", -1.0), r"config\.eval\.kv_budget_gib = -1\.0; expected >= 0"),
        (
            ("stages", "fkl", "max_skipped_frac", 2.0),
            r"max_skipped_frac = 2\.0; expected in \[0, 1\]",
        ),
    ],
)
def test_out_of_range_values_fail_at_the_boundary_naming_the_field(override, message):
    *path, value = override
    config = _tiny_with(path, value)
    with pytest.raises(ValueError, match=message):
        pipeline.validate(config)


def test_boolean_arguments_accept_only_true_and_false_forms():
    assert "stage3" not in toy_arith.get_config("stage3=No").stages
    assert "stage3" in toy_arith.get_config("stage3=TRUE").stages
    with pytest.raises(ValueError, match=r"stage3='ture': expected one of true, 1, yes, false"):
        toy_arith.get_config("stage3=ture")


@pytest.mark.parametrize(
    "field, value",
    [(("eval", "splits"), "math500,aime23"), (("stages", "fkl", "data"), "train_3h")],
)
def test_unknown_pool_or_eval_split_fails_at_validation(field, value):
    config = _tiny_with(field, value)
    where = "config.eval.splits" if field[0] == "eval" else "config.stages.fkl.data"
    with pytest.raises(KeyError, match=rf"{where}: unknown data pool '{value.split(',')[-1]}'"):
        pipeline.validate(config)
