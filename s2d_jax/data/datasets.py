"""The public way to get examples: `load_examples(name, split, ...)`, its `load_stats`, `half_split`.

    examples = load_examples("math500", "test")          # built once into data_dir, then cached
    pool = load_examples("math_train", "train", manual_path="dapo-math-17k.parquet", config="dapo")
    teacher_pool = half_split(pool, "1H", seed=0)
    demos = load_examples("arith", "demos", config=toy_arith.ArithConfig())

Every example is a dict with keys `sources.EXAMPLE_FIELDS`: id, problem, answer, level (int, -1 if
none), subject ("" if none), solution ("" if none). Datasets and splits are listed in `SPLITS`.
The benchmarks and MATH train ship in the package; `math_train` also reads a user's JSONL or
parquet file (`manual_path`) with a column layout (`config`): a name in `sources.COLUMN_MAPS`
("dapo" for DAPO-Math-17K, "math", "gsm8k", "problem_answer") or a `sources.ColumnMap`.
Everything but the toy goes through the tensorflow-datasets builders of `builders.py`, written under
`data_dir` (argument, else $S2D_JAX_DATA_DIR, else ~/.cache/s2d_jax/tfds). The toy `arith` is
generated in memory from its `ArithConfig` (milliseconds), so it has no cache to go stale.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from s2d_jax.data import sources, toy_arith

SPLITS = {
    "math500": ("test",),
    "aime24": ("test",),
    "aime25": ("test",),
    "gsm8k": ("train", "test"),
    "math_train": ("train",),
    "arith": toy_arith.SPLITS,
}
HALVES = ("1H", "2H")
_log = logging.getLogger(__name__)
DATA_DIR_ENV = "S2D_JAX_DATA_DIR"


def default_data_dir() -> str:
    """$S2D_JAX_DATA_DIR if set, else ~/.cache/s2d_jax/tfds."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    return os.path.join(os.path.expanduser("~"), ".cache", "s2d_jax", "tfds")


def load_examples(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    manual_path: str | None = None,
    config: str | sources.ColumnMap | toy_arith.ArithConfig | None = None,
) -> list[dict]:
    """The examples of one split, in source order (math_train: deduplicated).

    Builds the dataset on first use; skipped rows are logged as a warning (see `load_stats`).
    """
    _check_split(name, split)
    if name == "arith":
        return toy_arith.generate(_arith_config(config, manual_path))[split]
    builder = _prepared_builder(name, data_dir, manual_path, config)
    stats = builder.info.metadata[split]
    if sum(stats["skipped"].values()) or stats["duplicates"]:
        _log.warning(
            "%s/%s: kept %d of %d rows; skipped %s; %d duplicate problems dropped; first errors: %s",
            name,
            split,
            stats["kept"],
            stats["rows"],
            stats["skipped"],
            stats["duplicates"],
            stats["errors"],
        )
    source = builder.as_data_source(split)
    # One batched read: far fewer round trips into array_record than indexing record by record.
    return [_decode(record) for record in source.__getitems__(range(len(source)))]


def load_stats(
    name: str,
    *,
    data_dir: str | None = None,
    manual_path: str | None = None,
    config: str | sources.ColumnMap | toy_arith.ArithConfig | None = None,
) -> dict[str, dict]:
    """Per split: rows read, kept, skipped by reason, duplicates dropped, first error messages."""
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SPLITS)}")
    if name == "arith":
        splits = toy_arith.generate(_arith_config(config, manual_path))
        return {
            split: sources.ReadStats(rows=len(exs), kept=len(exs)).as_dict()
            for split, exs in splits.items()
        }
    builder = _prepared_builder(name, data_dir, manual_path, config)
    return {split: dict(builder.info.metadata[split]) for split in SPLITS[name]}


def half_split(examples: list[dict], half: str, *, seed: int) -> list[dict]:
    """One of two fixed halves (1H gets the extra example when the count is odd).

    The halves depend only on the set of examples (keyed by id and problem) and the seed, not on
    their order; the returned examples keep their input order.
    """
    if half not in HALVES:
        raise ValueError(f"half={half!r}: expected one of {HALVES}")
    keys = sorted((ex["id"], ex["problem"]) for ex in examples)
    order = np.random.default_rng(seed).permutation(len(keys))
    first = {keys[i] for i in order[: (len(keys) + 1) // 2]}
    want_first = half == "1H"
    return [ex for ex in examples if ((ex["id"], ex["problem"]) in first) == want_first]


def _check_split(name: str, split: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SPLITS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"dataset {name!r} has no split {split!r}; expected one of {SPLITS[name]}")


def _arith_config(config, manual_path) -> toy_arith.ArithConfig:
    if manual_path is not None:
        raise ValueError("dataset 'arith' is generated; manual_path must be None")
    if config is None:
        return toy_arith.ArithConfig()
    if not isinstance(config, toy_arith.ArithConfig):
        raise TypeError(f"dataset 'arith' takes an ArithConfig as config, got {config!r}")
    return config


def _prepared_builder(name, data_dir, manual_path, config):
    """The dataset's tfds builder, built into data_dir unless already there."""
    import tensorflow_datasets as tfds  # lazy: the toy path never needs it

    from s2d_jax.data import builders

    download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    if manual_path is None:
        if config is not None and not (name == "math_train" and config == "math"):
            raise ValueError(
                f"dataset {name!r} with config={config!r} needs manual_path (a local file); the "
                "shipped files have a fixed layout"
            )
        builder_cls, builder_config = builders.shipped_config(name)
    else:
        if name != "math_train":
            raise ValueError(f"manual_path is for 'math_train' only, not {name!r}")
        columns, label = _columns(config)
        manual_path = os.path.abspath(os.path.expanduser(manual_path))
        builder_cls = builders.MathTrain
        builder_config = builders.manual_config(manual_path, columns, label)
        download_config = tfds.download.DownloadConfig(
            manual_dir=os.path.dirname(manual_path), try_download_gcs=False
        )
    builder = builder_cls(
        data_dir=data_dir or default_data_dir(), config=builder_config, file_format="array_record"
    )
    if manual_path is not None and not builder.is_prepared():
        # A file with no usable row fails here with our counts, before tfds starts a build
        # (which would stop on its own "No examples were yielded" instead).
        sources.read_examples(manual_path, builder_config.columns, id_prefix="", dedup=False)
    builder.download_and_prepare(download_config=download_config)
    return builder


def _columns(config) -> tuple[sources.ColumnMap, str]:
    if config is None:
        return sources.COLUMN_MAPS["problem_answer"], "problem_answer"
    if isinstance(config, sources.ColumnMap):
        return config, "custom"
    if isinstance(config, str) and config in sources.COLUMN_MAPS:
        return sources.COLUMN_MAPS[config], config
    raise ValueError(
        f"math_train config={config!r}: expected a ColumnMap or one of {sorted(sources.COLUMN_MAPS)}"
    )


def _decode(record: dict) -> dict:
    """A tfds record (text as bytes, level as a numpy int) -> a plain example dict."""
    example = {}
    for field in sources.EXAMPLE_FIELDS:
        value = record[field]
        example[field] = int(value) if field == "level" else value.decode("utf-8")
    return example
