"""The conformance matrix: each backend x each feature, filled from the results of the tests that
prove it, never by hand. ``python tests/conformance.py`` runs those tests and writes
docs/conformance.md; ``--check`` (run by .ci/run) fails if a test failed, if a cell's test is
missing, or if the page is not what the results make.

A cell is "tested" (a test drives the feature against a loopback server in the provider's wire
format, or the real model), "refused" (a test shows the call is refused with ``invalid_input``
before anything is sent), or "none" (the provider sends no such thing: nothing to test).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "conformance.md"

FEATURES = {
    "text": "text",
    "stream_usage": "stream with usage",
    "tools": "tools",
    "stream_tools": "streamed tools",
    "structured": "structured output",
    "images": "images",
    "reasoning": "reasoning",
    "errors": "error kinds",
}

# What proves each cell of the built-in backends: (verdict, a regex of test ids in FILES).
BUILT_IN: dict[str, dict[str, tuple[str, str]]] = {
    "ollama": {
        "text": ("tested", r"test_ollama\.py::test_success_sync$"),
        "stream_usage": ("tested", r"test_ollama_stream\.py::test_the_fixture_stream\["),
        "tools": ("tested", r"test_ollama_tools\.py::test_a_tools_request_is_the_fixture_and_its_reply_a_tool_call"),
        "stream_tools": ("tested", r"test_ollama_tools\.py::test_a_streamed_tool_call_is_the_same"),
        "structured": ("tested", r"test_ollama_tools\.py::test_response_format_sends_the_schema_as_format"),
        "images": ("tested", r"test_ollama_tools\.py::test_image_parts_from_a_path_bytes_or_a_data_url_go_in_images"),
        "reasoning": ("tested", r"test_ollama_stream\.py::test_thinking_is_streamed_as_reasoning"),
        "errors": ("tested", r"test_ollama\.py::test_error_statuses"),
    },
    "local": {
        "text": ("tested", r"test_local\.py::test_a_sensible_answer_with_usage_and_finish_reason$"),
        "stream_usage": ("tested", r"test_local\.py::test_a_sync_stream_yields_the_reply_as_it_comes$"),
        "tools": ("refused", r"test_conformance\.py::test_refused_before_sending\[local-tools\]"),
        "stream_tools": ("refused", r"test_conformance\.py::test_refused_before_sending\[local-tools\]"),
        "structured": ("tested", r"test_local\.py::test_a_response_format_is_enforced_by_grammar$"),
        "images": ("refused", r"test_conformance\.py::test_refused_before_sending\[local-images\]"),
        "reasoning": ("none", ""),
        "errors": ("tested", r"test_local\.py::test_a_prompt_longer_than_a_slots_context_is_a_context_length_error"),
    },
}
for name in ("openai", "anthropic"):
    BUILT_IN[name] = {
        "text": ("tested", rf"test_{name}\.py::test_success$"),
        "stream_usage": ("tested", rf"test_stainless_stream\.py::test_the_recorded_stream\[{name}"),
        "tools": ("tested", rf"test_stainless_tools\.py::test_tools_are_sent_as_recorded_and\w*\[{name}"),
        "stream_tools": ("tested", rf"test_stainless_tools\.py::test_a_streamed_tool_call_is_sent_as\w*\[{name}"),
        "structured": ("tested", rf"test_stainless_tools\.py::test_structured_output_sends_the_schema\w*\[{name}"),
        "images": ("tested", rf"test_stainless_tools\.py::test_image_parts_from_a_path_bytes_or_a_url\[{name}"),
        "reasoning": (
            "tested",
            r"test_stainless_stream\.py::test_openai_reasoning_field_is_reasoning_too$"
            if name == "openai"
            else r"test_stainless_stream\.py::test_anthropic_whole_reply_thinking_is_reasoning$",
        ),
        "errors": ("tested", rf"test_{name}\.py::test_errors\["),
    }  # fmt: skip

# gemini: the SDK parity tests send each feature's request through chatplug and the raw google-genai
# SDK and check what chatplug made of the recorded reply; the fault matrix's HTTP status cells.
PARITY = r"test_sdk_parity\.py::test_gemini_generate_content_and_chatplug_send_the_same_request"
BUILT_IN["gemini"] = {
    "text": ("tested", rf"{PARITY}\[gemini-plain-"),
    "stream_usage": ("tested", rf"{PARITY}\[gemini-stream-(sync|async)\]"),
    "tools": ("tested", rf"{PARITY}\[gemini-tools-"),
    "stream_tools": ("tested", rf"{PARITY}\[gemini-stream-tools-"),
    "structured": ("tested", rf"{PARITY}\[gemini-structured-"),
    "images": ("tested", rf"{PARITY}\[gemini-image-"),
    "reasoning": ("tested", rf"{PARITY}\[gemini-(stream-)?thinking"),
    "errors": ("tested", r"test_fault_matrix\.py::test_fault\[gemini-\d"),
}

FILES = [
    "tests/test_ollama.py", "tests/test_ollama_stream.py", "tests/test_ollama_tools.py", "tests/test_openai.py",
    "tests/test_anthropic.py", "tests/test_stainless_stream.py", "tests/test_stainless_tools.py",
    "tests/test_local.py", "tests/test_compatible.py", "tests/test_conformance.py", "tests/test_sdk_parity.py",
    "tests/test_fault_matrix.py",
]  # fmt: skip


def compatible_cells(name: str) -> dict[str, tuple[str, str]]:
    """The cells of an OpenAI-compatible provider, by test_compatible.py's names: refused when a
    test ``test_refused_before_sending[NAME-FEATURE]`` shows it (the key ``FEATURE!``, looked at
    first), else tested by ``test_FEATURE[NAME]``."""
    cells = {}
    for feature in FEATURES:
        refusal = rf"test_(compatible|conformance)\.py::test_refused_before_sending\[{name}-{feature}\]"
        cells[feature + "!"] = ("refused", refusal)
        cells[feature] = ("tested", rf"test_compatible\.py::test_{feature}\[{name}\]")
    return cells


def plan() -> dict[str, dict[str, tuple[str, str]]]:
    sys.path.insert(0, str(ROOT / "src"))
    from chatplug.backends.compatible import PROVIDERS

    cells = dict(BUILT_IN)
    for provider in PROVIDERS:
        cells[provider.name] = compatible_cells(provider.name)
    return cells


def collect() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", *FILES],
        capture_output=True, text=True, cwd=ROOT, check=False,
    ).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if "::" in line]


def run(ids: list[str]) -> dict[str, str]:
    """Each test's outcome: passed, failed or skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", f"--junitxml={report}", *ids],
            cwd=ROOT, check=False, capture_output=True, text=True,
        )  # fmt: skip
        if not report.exists():
            raise SystemExit(f"conformance: pytest wrote no report:\n{proc.stdout}\n{proc.stderr}")
        outcomes = {}
        for case in ET.parse(report).iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            path, _, cls = module.partition("/Test")
            test_id = f"{path}.py::" + (f"Test{cls}::" if cls else "") + case.get("name", "")
            kinds = {child.tag for child in case}
            outcomes[test_id] = (
                "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
            )
        return outcomes


def matrix() -> tuple[str, list[str]]:
    cells, collected = plan(), collect()
    chosen: dict[tuple[str, str], tuple[str, list[str]]] = {}
    problems = []
    for backend, row in cells.items():
        for feature in FEATURES:
            options = [row[key] for key in (feature + "!", feature) if key in row]
            for verdict, pattern in options:
                if verdict == "none":
                    chosen[backend, feature] = ("none", [])
                    break
                ids = [test for test in collected if re.search(pattern, test)]
                if ids:
                    chosen[backend, feature] = (verdict, ids)
                    break
            else:
                problems.append(f"{backend} / {feature}: no test proves it (looked for {[p for _, p in options]})")
    outcomes = run(sorted({test for _, ids in chosen.values() for test in ids}))
    lines = [
        "# Conformance",
        "",
        "Each backend and each feature, filled from the results of the tests that prove it, by",
        "`python tests/conformance.py` (CI checks this page is current with `--check`). **tested**: a",
        "test drives the feature over a loopback server in the provider's wire format (or the real",
        "model, for `local`); **refused**: a test shows the call refused with `invalid_input` before",
        "anything is sent; **none**: the provider sends no such thing.",
        "",
        "| backend | " + " | ".join(FEATURES.values()) + " |",
        "|---|" + "---|" * len(FEATURES),
    ]
    for backend in cells:
        row = []
        for feature in FEATURES:
            verdict, ids = chosen.get((backend, feature), ("missing", []))
            results = {outcomes.get(test, "not run") for test in ids}
            if ids and results != {"passed"}:
                problems.append(f"{backend} / {feature}: {sorted(results)} in {ids}")
            row.append(verdict)
        lines.append(f"| {backend} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n", problems


def main() -> int:
    check = "--check" in sys.argv
    page, problems = matrix()
    for problem in problems:
        print("conformance:", problem, file=sys.stderr)
    if check:
        if PAGE.read_text() != page:
            print("conformance: docs/conformance.md is not current: run python tests/conformance.py", file=sys.stderr)
            return 1
        return 1 if problems else 0
    PAGE.write_text(page)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
