"""Pipeline stages: load a layer range, run it, keep per-session KV-caches."""
