"""Tests of `orchestrator/allocator/`."""
