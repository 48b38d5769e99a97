"""The CPU side of vlmq: queue protocol, token-range allocator, pipeline, client, CLI."""
