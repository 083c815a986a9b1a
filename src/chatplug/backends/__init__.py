"""chatplug's built-in backends, one module each, registered through the ``chatplug``
entry-point group exactly like third-party plugins (see pyproject.toml)."""
