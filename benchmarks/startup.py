"""CLI startup: wall time of `edgeprune --help` and `edgeprune profiles list`, each run as a fresh subprocess.

Runs the console script next to this interpreter (the .venv's `edgeprune`), or `python -c "...app()"` when there is
none. One untimed warm-up run per command, then REPEATS timed runs; prints the median (and min/max) with the CPU
model from /proc/cpuinfo. A separate untimed run with PYTHONPROFILEIMPORTTIME=1 records whether the command
imported torch (or transformers / onnxruntime).

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["profiles", "list"])
HEAVY = ("torch", "transformers", "onnxruntime")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cli() -> list[str]:
    script = Path(sys.executable).parent / "edgeprune"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from edgeprune.cli import app; app()"]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*cli(), *argv], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"edgeprune {' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
    return result


def heavy_imports(argv: list[str], env: dict[str, str]) -> list[str]:
    """Top-level heavy packages the command imported, from Python's own import-time log on stderr."""
    log = run(argv, {**env, "PYTHONPROFILEIMPORTTIME": "1"}).stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in imported]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Python {platform.python_version()}")
    print(f"command: {' '.join(cli())}; {args.repeats} runs each after one warm-up; wall time per subprocess")
    for argv in COMMANDS:
        run(argv, env)  # warm-up: page cache, .pyc files
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(argv, env)
            times.append(time.perf_counter() - start)
        heavy = heavy_imports(argv, env)
        print(f"edgeprune {' '.join(argv):<14} median {statistics.median(times) * 1000:7.1f} ms  "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})  "
              f"torch imported: {'yes' if 'torch' in heavy else 'no'}"
              + (f"  [also: {', '.join(h for h in heavy if h != 'torch')}]" if set(heavy) - {"torch"} else ""))


if __name__ == "__main__":
    main()
