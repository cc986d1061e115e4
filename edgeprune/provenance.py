"""What produced a figure: library versions and the host, recorded beside every measurement."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("edgeprune", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def host_fingerprint() -> dict[str, object]:
    from edgeprune.devices import detect_host

    host = detect_host()
    return {"cpu": host.cpu.name, "arch": host.cpu.arch, "cores": host.cpu.cores,
            "isa": host.cpu.isa, "memory_gib": host.memory.capacity.value, "platform": platform.platform()}
