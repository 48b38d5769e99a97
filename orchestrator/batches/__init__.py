"""Batches as users bring them: OpenAI Batch input files in, OpenAI output and error files out.

Importable where only Redis is: no torch, ray, transformers or Pillow (the CLI's Redis-only
commands use it).
"""
