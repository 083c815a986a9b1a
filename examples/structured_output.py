"""Structured output: ask for a typed object, get it validated.

    python examples/structured_output.py "France"
    LLM_BACKEND=local python examples/structured_output.py "Japan"   # the embedded model, by grammar

``response_format=`` takes a pydantic model (or a JSON-schema dict); each backend asks its provider
for that schema in its own way (Ollama ``format``, OpenAI ``json_schema``, Anthropic
``output_config``, llama.cpp grammars). ``response.parsed`` is the validated instance; a reply that
does not fit is a failed response with ``error_kind == "invalid_output"`` and the raw text kept.
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from chatplug import generate_completion_sync


class Country(BaseModel):
    name: str
    capital: str
    languages: list[str]


def main(country: str) -> int:
    response = generate_completion_sync(
        f"Give the name, capital and official languages of {country}.",
        temperature=0,
        max_tokens=200,
        response_format=Country,
    )
    if not response.success:
        print(f"failed ({response.error_kind}): {response.error}", file=sys.stderr)
        if response.content:
            print(f"the raw reply: {response.content!r}", file=sys.stderr)
        return 1
    info: Country = response.parsed
    print(f"{info.name}: capital {info.capital}; languages {', '.join(info.languages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "France"))
