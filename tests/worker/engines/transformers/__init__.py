"""Tests of `worker/engines/transformers/`."""
