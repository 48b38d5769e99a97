"""The scaler: vision and generator actors sized to the queue's backlog (see `loop.py`)."""
