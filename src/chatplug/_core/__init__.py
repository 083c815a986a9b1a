"""Values and the backend contract: the bottom floor, importing nothing above it."""
