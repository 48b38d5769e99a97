"""The test suite. Its folders mirror the packages; `support/` holds what several tests share."""
