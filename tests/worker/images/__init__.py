"""Tests of `worker/images/`."""
