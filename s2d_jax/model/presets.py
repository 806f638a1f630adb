"""Named model configurations: published dimensions of real checkpoints, and toy sizes.

Each real entry copies the `config.json` of the named Hugging Face release (source in the comment);
`tests/test_model.py` checks them against those values written out independently.
"""

_QWEN3 = dict(
    vocab_size=151_936,
    head_dim=128,
    n_kv_heads=8,
    rope_theta=1_000_000.0,
    norm_eps=1e-6,
    qk_norm=True,
    max_seq_len=40_960,
    family="qwen3",
)
_LLAMA3 = dict(
    vocab_size=128_256,
    head_dim=128,
    n_kv_heads=8,
    rope_theta=500_000.0,
    rope_scaling=(8.0, 1.0, 4.0, 8192),
    norm_eps=1e-5,
    tie_embeddings=False,
    max_seq_len=131_072,
    family="llama",
)
# Toy decoders for the built-in arithmetic task: vocab_size is replaced by the tokenizer's.
_TOY = dict(vocab_size=64, rope_theta=10_000.0, norm_eps=1e-6, qk_norm=True, max_seq_len=256)

PRESETS = {
    # Qwen/Qwen3-0.6B
    "qwen3_0.6b": dict(
        _QWEN3, d_model=1024, n_layers=28, n_heads=16, mlp_dim=3072, tie_embeddings=True
    ),
    # Qwen/Qwen3-1.7B
    "qwen3_1.7b": dict(
        _QWEN3, d_model=2048, n_layers=28, n_heads=16, mlp_dim=6144, tie_embeddings=True
    ),
    # Qwen/Qwen3-4B
    "qwen3_4b": dict(
        _QWEN3, d_model=2560, n_layers=36, n_heads=32, mlp_dim=9728, tie_embeddings=True
    ),
    # Qwen/Qwen3-8B
    "qwen3_8b": dict(
        _QWEN3, d_model=4096, n_layers=36, n_heads=32, mlp_dim=12288, tie_embeddings=False
    ),
    # Qwen/Qwen3-14B
    "qwen3_14b": dict(
        _QWEN3, d_model=5120, n_layers=40, n_heads=40, mlp_dim=17408, tie_embeddings=False
    ),
    # Qwen/Qwen3-32B
    "qwen3_32b": dict(
        _QWEN3, d_model=5120, n_layers=64, n_heads=64, mlp_dim=25600, tie_embeddings=False
    ),
    # meta-llama/Llama-3.1-8B and -Instruct (same dimensions)
    "llama3_8b": dict(_LLAMA3, d_model=4096, n_layers=32, n_heads=32, mlp_dim=14336),
    # meta-llama/Llama-3.3-70B-Instruct
    "llama3_70b": dict(_LLAMA3, d_model=8192, n_layers=80, n_heads=64, mlp_dim=28672),
    # HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, no rope scaling)
    "smollm2_135m": dict(
        vocab_size=49_152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        mlp_dim=1536,
        rope_theta=100_000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_seq_len=8192,
        family="llama",
    ),
    # ~30.5M parameters, Qwen3-shaped: the CPU model of benchmarks/sampler.py and train_step.py.
    "bench_30m": dict(
        _QWEN3,
        d_model=512,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        head_dim=64,
        mlp_dim=1024,
        vocab_size=32_000,
        tie_embeddings=True,
    ),
    # ~0.3M parameters at vocab 32: the toy student.
    "toy_student": dict(
        _TOY, d_model=80, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=20, mlp_dim=224
    ),
    # ~1M parameters at vocab 32: the toy teacher.
    "toy_teacher": dict(
        _TOY, d_model=128, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=352
    ),
    # ~5M parameters at vocab 22: the larger size of configs/toy_calibration.py.
    "toy_5m": dict(
        _TOY, d_model=256, n_layers=7, n_heads=8, n_kv_heads=4, head_dim=32, mlp_dim=704
    ),
    # Qwen3-shaped random pair of `configs/paper.py:pair=tiny` (teacher untied like Qwen3-8B,
    # student tied like Qwen3-1.7B); vocab_size holds the tiny chat tokenizer (random_models.py).
    "tiny_qwen3_teacher": dict(
        _QWEN3,
        d_model=64,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_dim=192,
        vocab_size=1024,
        max_seq_len=2048,
        tie_embeddings=False,
    ),
    "tiny_qwen3_student": dict(
        _QWEN3,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        mlp_dim=96,
        vocab_size=1024,
        max_seq_len=2048,
        tie_embeddings=True,
    ),
    # Smallest useful decoder, for unit tests.
    "toy_tiny": dict(_TOY, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64),
}
