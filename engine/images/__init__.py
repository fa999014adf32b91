"""Images in and out: decoding with limits, encoding, the on-disk store, sources."""
