"""Engines: what runs a model, behind one seam.

The seam (`seam`) is a `VisionEngine` (the rows an image will take, then its features) and a
`LanguageEngine` (requests in, futures out, dynamic batching inside); `config` says which engine
an actor runs and starts it. Two engines implement the seam: `transformers/` (CPU; tests and the
demo) and `exllamav2/` (GPU). Beside them: `epoch_gate` (what a generator does with ranges of a
newer or older epoch), `live_requests` (what an engine thread holds, so a thread that dies
fails it all) and `model_fingerprint` (the hash of a model directory that every image key
carries). Engines import the vocabulary, `encoding` and `images`, never `actors` or `tiny`.
The rest of vlmq reaches the engines through this package's face, below, and never imports the
two engine subpackages; only they import their libraries, and only inside functions.
"""

from worker.engines.config import (
    EngineConfig,
    EngineKind,
    start_language_engine,
    start_vision_engine,
)
from worker.engines.seam import (
    EngineLoad,
    ImageFeatures,
    LanguageEngine,
    VisionEngine,
    num_features_received,
)

__all__ = [
    "EngineConfig",
    "EngineKind",
    "EngineLoad",
    "ImageFeatures",
    "LanguageEngine",
    "VisionEngine",
    "num_features_received",
    "start_language_engine",
    "start_vision_engine",
]
