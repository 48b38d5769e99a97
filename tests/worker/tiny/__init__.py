"""Tests of `worker/tiny/`."""
