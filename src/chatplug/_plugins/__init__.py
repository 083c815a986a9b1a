"""The plugin manager: entry-point discovery, the backend registry, the observer hooks."""
