"""Model uploads: fetch, validate, sniff, optimize, store and register model files."""
