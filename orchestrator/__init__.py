"""The CPU side of vlmq: the Ray driver and everything it talks to.

`allocator/` hands out token ranges for the whole cluster; `pipeline/` takes jobs through CPU
tasks, vision and generator actors to outcomes; the Redis job queue (`queue/`) will sit in
front of it. At the top: `redis_keys` (every Redis key name), `private_redis` (a redis-server of
our own for the demo, tests and benchmarks), `cli` and `demo`. May import `worker/`; nothing in
`worker/` imports it. Never imports the tests or the benchmarks.
"""
