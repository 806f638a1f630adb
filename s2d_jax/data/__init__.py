"""Data for s2d_jax: math datasets, the toy task, prompts and tokenizers.

Modules (imported on demand, so `import s2d_jax.data` pulls in neither TensorFlow Datasets nor
transformers):
  datasets    load_examples / load_stats / half_split: the public entry points
  sources     the example schema and file reading (JSONL, parquet; column layouts; skipped rows)
  builders    tensorflow-datasets builders (math500, aime24, aime25, gsm8k, math_train)
  toy_arith   the built-in toy task `arith` and its sentencepiece tokenizer
  prompts     problem -> prompt text (chat template, plain, raw)
  tokenizers  one Tokenizer interface over Hugging Face and sentencepiece
The shipped files and their provenance and licenses: files/README.md.
"""
