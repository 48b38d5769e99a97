"""Tests of `worker/encoding/`."""
