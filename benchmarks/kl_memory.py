"""Peak temporary memory of the full-vocabulary KL losses, chunked vs naive, value and gradient.

Compiles (never runs) `jax.value_and_grad` of forward KL(teacher || student) and of reverse KL
(student || teacher) with respect to the student's hidden states [B, T, D] and unembedding [D, V],
once through `kl_chunked` (time chunks forward, time chunks x vocabulary slices backward) and once
naively (full [B, T, V] logits fed to `losses`), and reads `temp_size_in_bytes` from the compiled
executable's memory analysis. Inputs are `jax.ShapeDtypeStruct`s, so nothing is allocated.
Target: chunked <= 1/8 of naive.

    .venv/bin/python benchmarks/kl_memory.py                    # Qwen3 vocab, T=4096, D=2048, B=1
    .venv/bin/python benchmarks/kl_memory.py --chunk_size 256 --vocab_chunk 0

On the CPU backend, bfloat16 inputs (`--dtype bfloat16`) add float32 copies of both [D, V]
unembeddings, because XLA:CPU upcasts bfloat16 dots; accelerators multiply bfloat16 natively.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from s2d_jax.learn import kl_chunked, losses

GIB = 2**30


def _naive(loss_fn):
    def fn(h_s, w_s, h_t, w_t, mask):
        logits_s = jnp.einsum("btd,dv->btv", h_s, w_s, preferred_element_type=jnp.float32)
        logits_t = jnp.einsum("btd,dv->btv", h_t, w_t, preferred_element_type=jnp.float32)
        return loss_fn(logits_s, logits_t, mask)

    return fn


def _chunked(loss_fn, chunk_size, vocab_chunk):
    def fn(h_s, w_s, h_t, w_t, mask):
        return loss_fn(h_s, w_s, h_t, w_t, mask, chunk_size=chunk_size, vocab_chunk=vocab_chunk)

    return fn


def memory(fn, shapes) -> dict[str, int]:
    """Compiled memory analysis of value_and_grad(fn) w.r.t. its first two arguments."""
    grad_fn = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)
    stats = jax.jit(grad_fn).lower(*shapes).compile().memory_analysis()
    return {
        "temp": stats.temp_size_in_bytes,
        "args": stats.argument_size_in_bytes,
        "out": stats.output_size_in_bytes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d_model", type=int, default=2048)
    parser.add_argument("--d_teacher", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--vocab_chunk", type=int, default=8192, help="0: no vocabulary slicing")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    dt = jnp.dtype(args.dtype)
    B, T, D, DT, V = args.batch, args.tokens, args.d_model, args.d_teacher, args.vocab
    shapes = (
        jax.ShapeDtypeStruct((B, T, D), dt),
        jax.ShapeDtypeStruct((D, V), dt),
        jax.ShapeDtypeStruct((B, T, DT), dt),
        jax.ShapeDtypeStruct((DT, V), dt),
        jax.ShapeDtypeStruct((B, T), jnp.bool_),
    )
    one_block = B * T * V * 4
    print(
        f"backend {jax.default_backend()}, B={B} T={T} D={D} D_T={DT} V={V} {args.dtype}, "
        f"chunk {args.chunk_size}, vocab_chunk {args.vocab_chunk}; one f32 [B,T,V] = {one_block / GIB:.2f} GiB, "
        f"one f32 [B,chunk,V] = {B * args.chunk_size * V * 4 / GIB:.3f} GiB"
    )
    print(f"{'loss':<12} {'form':<8} {'temp GiB':>9} {'args GiB':>9} {'out GiB':>8}")
    for name, naive_fn, chunked_fn in [
        ("forward_kl", losses.forward_kl_loss, kl_chunked.forward_kl_loss_chunked),
        ("reverse_kl", losses.reverse_kl_loss, kl_chunked.reverse_kl_loss_chunked),
    ]:
        naive = memory(_naive(naive_fn), shapes)
        chunked = memory(_chunked(chunked_fn, args.chunk_size, args.vocab_chunk or None), shapes)
        for form, m in [("naive", naive), ("chunked", chunked)]:
            row = f"{name:<12} {form:<8} {m['temp'] / GIB:9.3f} {m['args'] / GIB:9.3f}"
            print(f"{row} {m['out'] / GIB:8.3f}")
        ratio = chunked["temp"] / naive["temp"]
        verdict = "meets" if ratio <= 1 / 8 else "MISSES"
        print(f"{name:<12} chunked/naive temp = {ratio:.4f} (1/{1 / ratio:.1f}); {verdict} <= 1/8")


if __name__ == "__main__":
    main()
