"""Tests of `worker/actors/`."""
