"""Prompt encoding: a prompt with image aliases and their spans becomes one flat list of IDs.

`prompt_encoder` splits at the aliases and puts each span's token range in its place, exactly as
exllamav2 0.3.2 encodes; `text_tokenizer` is the tokenizer seam and reads a model directory as
exllamav2 does. Imports only the vocabulary (`worker/` top level) and the `tokenizers` library;
engines and the pipeline import it.
"""
