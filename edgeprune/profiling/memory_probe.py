"""Run by ``memory.py`` as a script in a fresh interpreter; imports only onnxruntime and numpy.

It must not import the edgeprune package: that would load torch and transformers into the
process and bury the model's own memory under theirs.
Usage: ``python memory_probe.py MODEL.onnx FEED.npz THREADS RUNS`` → one JSON line on stdout.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {key}: peak memory is measured on Linux only")


def main(model, feed_path, threads, runs):
    feed = dict(np.load(feed_path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    baseline = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset the high-water mark to the current RSS
        handle.write("5")
    sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session_peak = status_mb("VmHWM")
    for _ in range(runs):
        sess.run(None, feed)
    return {"baseline_mb": round(baseline, 2), "peak_mb": round(status_mb("VmHWM"), 2),
            "session_peak_mb": round(session_peak, 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
