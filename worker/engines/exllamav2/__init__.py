"""The exllamav2 engine (GPU): both sides of the seam over exllamav2 0.3.2.

`engine` starts it; `model` loads and sets up, `vision` gives layouts and image rows,
`embeddings` places rows at the allocator's ranges (never exllamav2's global counter), `jobs`
turns requests into exllamav2 jobs and result dicts into results, and `language` is the one
thread that drives the dynamic generator. The only place that imports exllamav2, and only
inside functions, so this package imports on a machine without it. Imports the vocabulary,
`encoding`, `images` and the seam; only `worker/engines/config.py` (and the tests and the GPU
check) import it.
"""
