"""What plugins cost, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_plugins.py [N ...]

1. ``import chatplug`` with N plugins installed: it must load no entry point and no SDK
   (asserted), so its time must not grow with N.
2. The first dispatch, which reads the entry points and imports every plugin module, with N
   fake plugin distributions on ``PYTHONPATH`` (each a dist-info with an entry point in the
   ``chatplug`` group and a module registering one backend), against none installed.
3. Per-call cost of the observability hooks: calls to the ``testing`` backend with and without
   the example metrics plugin registered.

Every process-level number is the median of several fresh processes, with bytecode compiled.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = """
from chatplug import ChatBackend, ChatResult, hookimpl

class Backend(ChatBackend):
    def complete(self, request):
        return ChatResult("", request.model)
    async def acomplete(self, request):
        return ChatResult("", request.model)

@hookimpl
def register_backends(register):
    register({name!r}, Backend)
"""

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import chatplug
t_import = time.perf_counter() - t0
leaked = [m for m in ("chatplug.backends.ollama", "ollama", "openai", "anthropic", "importlib.metadata")
          if m in sys.modules] + [m for m in sys.modules if m.startswith("bench_plugin_")]
t_meta = time.perf_counter()
import importlib.metadata  # the first dispatch imports it; timed apart from the rest of loading
t_meta = time.perf_counter() - t_meta
t1 = time.perf_counter()
chatplug.registry.load()
t2 = time.perf_counter()
first = chatplug.generate_completion_sync("hi", backend="testing")
t3 = time.perf_counter()
chatplug.generate_completion_sync("hi", backend="testing")
t4 = time.perf_counter()
print(json.dumps({"import": t_import, "metadata": t_meta, "load": t2 - t1, "first_call": t3 - t2, "call": t4 - t3,
                  "leaked": leaked, "ok": first.success, "backends": len(chatplug.registry.names())}))
"""


def make_plugins(root: Path, n: int) -> None:
    for i in range(n):
        module = f"bench_plugin_{i}"
        (root / f"{module}.py").write_text(PLUGIN.format(name=f"bench{i}"))
        info = root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bench-plugin-{i}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[chatplug]\nbench{i} = {module}\n")
    compileall.compile_dir(str(root), quiet=1)


def probe(path: Path, runs: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "CHATPLUG_", "PYTHON"))}
    env["PYTHONPATH"] = str(path)
    samples: list[dict[str, float]] = []
    for _ in range(runs + 1):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(PROBE)], capture_output=True, text=True, env=env, check=True
        )
        out = json.loads(proc.stdout)
        assert out["leaked"] == [], f"import chatplug loaded {out['leaked']}"
        assert out["ok"], "the first dispatch failed"
        samples.append(out)
    samples = samples[1:]  # the first run warms the OS file cache
    result = {
        key: statistics.median(s[key] for s in samples) * 1000
        for key in ("import", "metadata", "load", "first_call", "call")
    }
    result["backends"] = samples[0]["backends"]
    return result


def hook_cost_us(calls: int = 3000, batches: int = 7) -> tuple[float, float]:
    """Per-call time of a testing-backend call without, then with, the metrics plugin."""
    import importlib.util

    import chatplug
    from chatplug._plugins.manager import registry

    spec = importlib.util.spec_from_file_location(
        "chatplug_metrics", ROOT / "examples/plugins/chatplug-metrics/src/chatplug_metrics/__init__.py"
    )
    assert spec is not None and spec.loader is not None
    metrics = importlib.util.module_from_spec(spec)
    sys.modules["chatplug_metrics"] = metrics
    spec.loader.exec_module(metrics)

    def batch() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            chatplug.generate_completion_sync("hi", backend="testing")
        return (time.perf_counter() - t0) / calls * 1e6

    batch()  # warm up
    without, with_ = [], []
    for _ in range(batches):
        without.append(batch())
        registry.register_plugin(metrics, "metrics")
        with_.append(batch())
        registry.unregister_plugin("metrics")
    return statistics.median(without), statistics.median(with_)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [0, 10, 50, 200]
    if 0 not in counts:
        counts.insert(0, 0)
    compileall.compile_dir(str(ROOT / "src" / "chatplug"), quiet=1)
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            path = Path(tmp) / f"n{n}"
            path.mkdir()
            make_plugins(path, n)
            results[n] = probe(path, runs=7)
            # Every fake plugin loaded and registered its backend: the load timed is the real one.
            assert results[n]["backends"] == results[0]["backends"] + n, results[n]

    base = results[0]
    print(f"median of 7 fresh processes each, {sys.executable}")
    print("import: `import chatplug`; metadata: importing importlib.metadata, paid at the first dispatch;")
    print("load: reading the entry points and importing the plugin modules (with 0 plugins: chatplug's own")
    print("backends, whose SDKs are not imported yet); 1st call/call: the dispatch after that")
    print(f"{'plugins':>8} {'import':>9} {'metadata':>9} {'load':>9} {'1st call':>9} {'call':>9} {'backends':>9}")
    for n, r in results.items():
        print(
            f"{n:>8} {r['import']:>7.1f}ms {r['metadata']:>7.1f}ms {r['load']:>7.1f}ms {r['first_call']:>7.2f}ms"
            f" {r['call'] * 1000:>7.0f}us {int(r['backends']):>9}"
        )
    first = {n: r["metadata"] + r["load"] + r["first_call"] for n, r in results.items()}
    for n in results:
        print(f"  first dispatch with {n:>3} plugins: {first[n]:6.1f} ms = {first[n] / first[0]:.2f}x none", end="")
        print(f", {(first[n] - first[0]) / n:.2f} ms per plugin" if n else "")
    print(f"import chatplug with {max(counts)} plugins vs none: {results[max(counts)]['import'] / base['import']:.2f}x")

    without, with_ = hook_cost_us()
    print(
        f"per call, testing backend: {without:.1f} us; with the metrics plugin's hooks: {with_:.1f} us "
        f"({with_ / without:.2f}x, +{with_ - without:.1f} us)"
    )


if __name__ == "__main__":
    main()
