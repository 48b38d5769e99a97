"""Tests of `worker/engines/exllamav2/`."""
