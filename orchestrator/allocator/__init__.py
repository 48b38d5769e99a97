"""The cluster-wide token-range allocator: same content, same range; never one range for two.

`token_range_allocator` is the named, detached Ray actor, started through `handle`; `id_ledger`
reserves IDs durably in Redis (one Lua script) and opens epochs; `range_client` carves ranges
from leased blocks on the client side; `config` holds the settings. Imports the vocabulary and
`orchestrator/redis_keys.py`, never the pipeline; the pipeline, the demo and the benchmarks
import it.
"""
