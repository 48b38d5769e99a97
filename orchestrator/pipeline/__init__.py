"""The pipeline: jobs in, outcomes out as they finish, over Ray.

`driver` holds `Pipeline` (asyncio on one driver thread); `job` is what goes in and comes out,
`config` its settings. Per job: `image_prep` decodes and hashes images in CPU tasks,
`image_key` content-addresses them, `feature_cache` keeps one features reference per key,
`vision_balancer` and `router` choose actors, and `actor_pool` starts the actors. Imports the
allocator and `worker/` (the engines only through their face); the demo, the tests and the
benchmarks import it, and the queue will.
"""
