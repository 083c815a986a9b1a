"""The HTTP machinery behind ``chatplug.toolkit``: clients, transports, the deadline, error mapping, redaction."""
