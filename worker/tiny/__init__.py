"""Tiny models: seeded, random-weight VLMs of real architectures, written to disk in HF format.

`model` writes a whole model directory (`vlmq make-tiny-model`); `model_configs`,
`model_weights`, `tokenizer`, `chat_templates` and `preprocessor_configs` write its parts.
Nothing is downloaded: the tokenizer is trained at run time. For the tests, the demo and the
benchmarks; no engine depends on it. Of vlmq it imports only itself and the vocabulary (of
libraries torch, tokenizers and safetensors; transformers it may, inside functions only); the
CLI, the demo, the tests and the benchmarks import it.
"""
