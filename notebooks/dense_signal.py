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
# # The dense signal, token by token
# On-policy distillation trains the student on the teacher's judgement of every token it samples.
# Here a few student completions of a finished run are scored by the teacher: the per-token
# reverse KL, KL(S || T) over the whole vocabulary, and log pT - log pS of the sampled token,
# beside each completion's verifier reward. Point `RUN_DIR` at a run directory (`make run`
# writes `runs/toy`), `STUDENT` / `TEACHER` at two of its stages. All computation is in
# `s2d_jax.workflow.dense_signal`; this notebook only plots.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from s2d_jax.workflow import dense_signal

RUN_DIR = Path(os.environ.get("S2D_RUN_DIR", "runs/toy"))
STUDENT = os.environ.get("S2D_STUDENT_STAGE", "fkl")
TEACHER = os.environ.get("S2D_TEACHER_STAGE", "teacher_grpo")
rows = dense_signal.sample_and_score(RUN_DIR, student=STUDENT, teacher=TEACHER, prompts=4)
for row in rows:
    print(f"reward {row.reward:.0f}  answer {row.answer!r}  problem {row.problem[:60]!r}")

# %% [markdown]
# ## Each completion, its tokens coloured by the reverse KL (darker: the teacher disagrees more)

# %%
fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.1 * len(rows)), squeeze=False)
top = max(float(max(row.reverse_kl_N.max(), 1e-6)) for row in rows)
for ax, row in zip(axes[:, 0], rows, strict=True):
    ax.axis("off")
    x = 0.0
    for token, kl in zip(row.tokens, row.reverse_kl_N, strict=True):
        ax.text(x, 0.5, token.replace("\n", "⏎") or "·", fontsize=9, family="monospace",
                bbox=dict(facecolor=plt.cm.Reds(kl / top), edgecolor="none", pad=1.5))  # fmt: skip
        x += 0.012 * max(len(token), 1)
    ax.set_title(f"reward {row.reward:.0f}", fontsize=9, loc="left")
plt.show()

# %% [markdown]
# ## Along each completion: reverse KL and log pT - log pS of the sampled token

# %%
fig, (ax_kl, ax_lr) = plt.subplots(1, 2, figsize=(12, 3.5))
for i, row in enumerate(rows):
    ax_kl.plot(row.reverse_kl_N, label=f"#{i} reward {row.reward:.0f}")
    ax_lr.plot(row.log_ratio_N)
ax_kl.set(title="KL(S || T) per token", xlabel="completion token")
ax_lr.set(title="log pT - log pS of the sampled token", xlabel="completion token")
ax_lr.axhline(0.0, color="k", lw=0.5)
ax_kl.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Where teacher and student disagree most

# %%
for token, kl, log_ratio in dense_signal.top_disagreements(rows, k=10):
    print(f"{token!r:>12}  KL(S||T) {kl:7.3f}  log pT/pS {log_ratio:+7.3f}")
mean_kl = np.mean([row.reverse_kl_N.mean() for row in rows])
print(f"mean per-token KL(S||T) over these completions: {mean_kl:.4f}")
