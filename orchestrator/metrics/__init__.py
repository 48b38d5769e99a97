"""vlmq's metrics on Ray's Prometheus export, and the cluster as Ray's state API shows it.

`definitions` declares the orchestrator's metrics (the actors declare theirs in
`worker/actors/metrics.py`); `queue_sampler` reads a queue's depth from Redis into gauges;
`cluster_view` lists the actors per role. Import the module you need: `cluster_view` needs a
Ray dashboard, the others only `ray.util.metrics`.
"""
