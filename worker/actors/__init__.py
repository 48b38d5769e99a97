"""The Ray actors' classes: a vision actor and a generator actor, each holding one engine.

Plain classes (`ray.remote` wraps them where `orchestrator/pipeline/actor_pool.py` starts them),
so they are tested without a cluster too. `stats` is what each actor reports, `fault_injection`
the declared seam through which failure tests make an actor die (off by default). Imports the
vocabulary, `encoding`, `images` and the engines' face (`worker.engines`); the pipeline imports
it.
"""
