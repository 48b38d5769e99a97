"""Helpers the tests share: tiny model directories, fixtures and the exllamav2 CPU shim."""
