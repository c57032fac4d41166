"""Runnable Plait examples; a package so that the test suite imports and runs them (none can rot)."""
