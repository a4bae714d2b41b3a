"""The built-in demo catalog: rendered objects and simulated engagement (no assets)."""
