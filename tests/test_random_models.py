"""The laptop twin's files: random HF checkpoints written once per run directory, a shared chat
tokenizer, and the shipped DAPO-layout training file (reproduced by its tool)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from configs import paper
from s2d_jax.data import builders, tokenizers
from s2d_jax.model import decoder, hf_io
from s2d_jax.tools import make_tiny_math
from s2d_jax.workflow import pipeline, random_models


def test_shipped_tiny_file_is_what_its_tool_writes():
    shipped = Path(builders.FILES_DIR) / make_tiny_math.OUT_FILE
    assert shipped.read_text(encoding="utf-8") == make_tiny_math.build()


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("twin")
    plan = pipeline.validate(paper.get_config("arm=full,pair=tiny"))
    return workdir, plan.models, random_models.materialize(plan.models, workdir, seed=0)


def test_random_checkpoints_load_like_real_ones(materialized):
    workdir, before, models = materialized
    assert all(not spec.hf_path for spec in before.values())
    for role, spec in models.items():
        assert Path(spec.hf_path) == workdir / "random_models" / role
        cfg, params = hf_io.load_hf(spec.hf_path)
        expected = decoder.ModelConfig.preset(spec.preset)
        assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (
            expected.d_model,
            expected.n_layers,
            expected.vocab_size,
        )
        # The random init of the preset (seeded by the run's seed and the role); written from a
        # jitted init, whose fused normal sampling may differ from eager in the last bit.
        key = jax.random.fold_in(jax.random.key(0), sum(map(ord, role)))  # as a toy fresh init
        want = decoder.init_params(expected, key)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
        tok = tokenizers.load_tokenizer(spec.hf_path)
        assert tok.has_chat_template and tok.vocab_size <= cfg.vocab_size
    teacher, student = (
        decoder.ModelConfig.preset(models[r].preset) for r in ("teacher", "student")
    )
    assert decoder.count_params(decoder.abstract_params(teacher)) > 2 * decoder.count_params(
        decoder.abstract_params(student)
    )


def test_rerun_reuses_the_written_files(materialized):
    workdir, before, models = materialized
    weights = Path(models["student"].hf_path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = random_models.materialize(before, workdir, seed=0)
    assert again == models and weights.stat().st_mtime_ns == stamp
