"""The GPU side of vlmq: engines, prompt encoding, actors. Never imports redis or orchestrator."""
