"""Tests of `worker/engines/`."""
