# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Losses, rewards and KLs of one run, stage by stage
# Point `RUN_DIR` at a run directory (`make run` writes `runs/toy`). Everything here reads the
# files the pipeline wrote (`<stage>/metrics.jsonl`, `report.md`); nothing is recomputed.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from s2d_jax.workflow import metrics, report

RUN_DIR = Path(os.environ.get("S2D_RUN_DIR", "runs/toy"))
stages = sorted(
    (p.name for p in RUN_DIR.iterdir() if (p / "metrics.jsonl").exists()),
    key=lambda name: (RUN_DIR / name / "metrics.jsonl").stat().st_mtime,
)
print(f"{RUN_DIR}: {stages}")

# %% [markdown]
# ## The results table (avg@k ± SE over test problems) and condition C2

# %%
print((RUN_DIR / "report.md").read_text())

# %% [markdown]
# ## Curves per stage

# %%
for key, title in report.CURVES:
    fig, ax = plt.subplots(figsize=(7, 3))
    for name in stages:
        points = [(r["step"], r[key]) for r in metrics.read_metrics(RUN_DIR / name) if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    if ax.lines:
        ax.legend(fontsize=7)
    plt.show()
