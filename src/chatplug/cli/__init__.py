"""The ``chatplug`` command: ``chatplug "prompt"``, ``chatplug backends``, ``chatplug serve`` and
``chatplug batch IN.jsonl -o OUT.jsonl``, built on the public functions."""

from ._commands import list_backends, main, serve

__all__ = ["list_backends", "main", "serve"]
