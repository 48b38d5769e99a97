"""The GPU side of vlmq: everything that runs where a model is loaded.

Its top level is the shared vocabulary that both sides speak: token ranges, spans, requests and
results, sampling parameters, the error hierarchy and the one bounded LRU. Those modules import
only each other. The subpackages build upward: `encoding` and `images` on the vocabulary,
`engines` on those, `actors` on the engines; `tiny` (the tiny test models) stands apart. Nothing
in `worker/` imports `orchestrator/`, Redis, the tests or the benchmarks; `orchestrator/`, the
tests and the benchmarks import it. `tests/test_import_rules.py` holds these rules.
"""
