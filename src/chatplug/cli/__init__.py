"""The ``chatplug`` command: ``chatplug "prompt"``, ``chatplug backends``, ``chatplug serve`` and
``chatplug batch IN.jsonl -o OUT.jsonl``, all on the public API."""

from ._commands import main

__all__ = ["main"]
