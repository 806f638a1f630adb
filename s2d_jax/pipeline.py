"""The stage driver. For now a smoke run: build a toy model and greedily decode with the KV cache."""

import jax
import jax.numpy as jnp

from s2d_jax import model


def run(config, workdir):
    del workdir
    cfg = model.ModelConfig.preset(config.model)
    params = model.init_params(cfg, jax.random.key(config.seed))
    tokens = jnp.array([[1, 2, 3]])
    cache = model.init_cache(cfg, 1, 3 + config.new_tokens)
    kv_mask = jnp.zeros((1, 3 + config.new_tokens), bool).at[:, :3].set(True)
    logits, cache = model.decode(cfg, params, tokens, jnp.arange(3)[None], cache, 0, kv_mask)
    out = [int(logits[0, -1].argmax())]
    for t in range(3, 3 + config.new_tokens - 1):
        kv_mask = kv_mask.at[:, t].set(True)
        step = jnp.array([[out[-1]]])
        logits, cache = model.decode(cfg, params, step, jnp.array([[t]]), cache, t, kv_mask)
        out.append(int(logits[0, -1].argmax()))
    print(f"{config.model}: {model.count_params(params):,} params; greedy tokens {out}")
