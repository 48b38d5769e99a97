"""Images as a model sees them: decoding with limits, layouts, and the model families.

`decoding` turns untrusted bytes into an RGB image or a typed `ImageError` (limits on bytes,
pixels, sides and count); `visual_tokens` says how many embedding rows an image of a given size
takes, and which of them are special tokens, before any tower runs; `vlm_family` tells which
family a model directory holds and reads its preprocessing. Imports only the vocabulary, Pillow
and NumPy; engines and the pipeline import it.
"""
