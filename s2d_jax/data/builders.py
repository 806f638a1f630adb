"""tensorflow-datasets builders for the math benchmarks and training pools (no TensorFlow needed).

Each builder turns one or more problem files into array_record splits in the common schema of
`sources.py`. Records keep file order (`disable_shuffling=True`); read them with
`builder.as_data_source(split)` (never `tfds.load` / `as_dataset`, which need TensorFlow). Text
features come back as bytes. The per-split `ReadStats` (skipped rows by reason, duplicates) are
stored in the dataset's metadata, so a cached dataset still reports them.

The config name carries a digest of the source files' bytes and of the column layout, so a changed
file or a different user file never reuses a stale cache. Builders skip tfds's global registry:
they are used by class (see `datasets.py`), and defining them changes no global state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from s2d_jax.data import sources

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")

_FEATURES = {
    "id": tfds.features.Text(),
    "problem": tfds.features.Text(),
    "answer": tfds.features.Text(),
    "level": tfds.features.Scalar(dtype=np.int32),
    "subject": tfds.features.Text(),
    "solution": tfds.features.Text(),
}


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
    """Which files make which split, and how to read them.

    `files`: (split, path) pairs; with `manual` the path is a file name inside the download
    config's `manual_dir`, else an absolute path. `dedup` drops repeated problems (first kept).
    """

    files: tuple[tuple[str, str], ...] = ()
    columns: sources.ColumnMap = sources.ColumnMap()
    dedup: bool = False
    manual: bool = False


class _ProblemFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder body: read each configured file with `sources.read_examples`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Common schema: id, problem, answer, level, subject, solution."}
    LICENSE = "see s2d_jax/data/files/README.md"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's default locates a package's builder through `importlib_resources`, which
        # tensorflow-datasets does not declare (absent here); this file is the answer anyway.
        return epath.Path(os.path.abspath(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict(dict(_FEATURES)),
            disable_shuffling=True,  # file order, so ids and half splits are stable
            metadata=tfds.core.MetadataDict(),
            license=self.LICENSE,
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        generators = {}
        for split, file in cfg.files:
            path = os.fspath(dl_manager.manual_dir / file) if cfg.manual else file
            examples, stats = sources.read_examples(
                path, cfg.columns, id_prefix=f"{self.name}/{split}", dedup=cfg.dedup
            )
            self.info.metadata[split] = stats.as_dict()
            generators[split] = self._generate_examples(examples)
        return generators

    def _generate_examples(self, examples):
        yield from enumerate(examples)  # keys = file order (shuffling is disabled)


class Math500(_ProblemFiles, skip_registration=True):
    """MATH-500 (Lightman et al. 2023), the 500-problem test subset of MATH; MIT license."""

    name = "math500"
    LICENSE = "MIT (MATH, Hendrycks et al. 2021)"


class Aime24(_ProblemFiles, skip_registration=True):
    """AIME 2024 I and II, 30 problems with integer answers; (c) MAA, not MIT-licensed."""

    name = "aime24"
    LICENSE = "(c) Mathematical Association of America"


class Aime25(_ProblemFiles, skip_registration=True):
    """AIME 2025 I and II, 30 problems with integer answers; (c) MAA, not MIT-licensed."""

    name = "aime25"
    LICENSE = "(c) Mathematical Association of America"


class Gsm8k(_ProblemFiles, skip_registration=True):
    """GSM8K (Cobbe et al. 2021): answer = the number after `####`; MIT license."""

    name = "gsm8k"
    LICENSE = "MIT (OpenAI grade-school-math)"


class MathTrain(_ProblemFiles, skip_registration=True):
    """A training pool: MATH train (shipped) or a user file such as DAPO-Math-17K; deduplicated."""

    name = "math_train"
    LICENSE = "MIT for the shipped MATH train; a user file keeps its own license"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the file with load_examples('math_train', 'train', manual_path=..., config=...): "
        "a JSONL or parquet file with a problem and an answer per row, e.g. DAPO-Math-17K's "
        "parquet with config='dapo'. Nothing is downloaded."
    )


# The shipped sources: builder class, (split, file under files/) pairs, column layout, dedup.
SHIPPED = {
    "math500": (Math500, (("test", "math500.jsonl"),), "math", False),
    "aime24": (Aime24, (("test", "aime24.jsonl"),), "problem_answer", False),
    "aime25": (Aime25, (("test", "aime25.jsonl"),), "problem_answer", False),
    "gsm8k": (
        Gsm8k,
        (("train", "gsm8k_train.jsonl"), ("test", "gsm8k_test.jsonl")),
        "gsm8k",
        False,
    ),
    "math_train": (MathTrain, (("train", "math_train.jsonl"),), "math", True),
}


def shipped_config(name: str) -> tuple[type[_ProblemFiles], SourceConfig]:
    """The builder class and config for a dataset whose files ship in the package."""
    builder_cls, files, layout, dedup = SHIPPED[name]
    paths = tuple((split, os.path.join(FILES_DIR, file)) for split, file in files)
    columns = sources.COLUMN_MAPS[layout]
    digest = _digest([path for _, path in paths], columns, dedup)
    config = SourceConfig(
        name=f"{layout}_{digest}",
        description=f"shipped files: {', '.join(file for _, file in files)}",
        files=paths,
        columns=columns,
        dedup=dedup,
    )
    return builder_cls, config


def manual_config(path: str, columns: sources.ColumnMap, label: str) -> SourceConfig:
    """A `math_train` config reading the user's file `path` as its train split (deduplicated).

    The builder finds it through the download config's `manual_dir` (= the file's folder).
    """
    digest = _digest([path], columns, True)
    return SourceConfig(
        name=f"{label}_{digest}",
        description=f"user file {path}",
        files=(("train", os.path.basename(path)),),
        columns=columns,
        dedup=True,
        manual=True,
    )


def _digest(paths: list[str], columns: sources.ColumnMap, dedup: bool) -> str:
    """12 hex digits over the files' bytes, the column layout and the dedup flag."""
    h = hashlib.sha256(repr((columns, dedup)).encode())
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file; expected {columns.describe()}")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]
