"""Tests of `orchestrator/pipeline/`."""
