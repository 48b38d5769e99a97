"""The transformers engine (CPU): both sides of the seam over Hugging Face's own model classes.

`model` loads a model directory, `vision` runs the tower and projector, `language` drives
prefill and decode with the injected rows (`embedding_injection`) under the `dynamic_batcher`,
one `sequence` per request. Runs Pixtral-in-Llava and Qwen2-VL; its logits equal transformers'
own model fed `input_ids` and `pixel_values`. The only place, with `worker/tiny/`, that imports
transformers, and only inside functions. Imports the vocabulary, `encoding`, `images` and the
seam; only `worker/engines/config.py` (and the tests and benchmarks) import it.
"""
