"""s2d_jax: sparse-to-dense post-training (teacher GRPO, forward-KL warmup, on-policy distillation)."""
