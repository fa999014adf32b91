"""Built-in models, built offline from configs with fixed-seed random weights."""
