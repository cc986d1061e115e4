"""Run by ``memory.py`` as a script in a fresh interpreter; imports only onnxruntime and numpy.

It must not import the edgeprune package: that would load torch and transformers into the
process and bury the model's own memory under theirs.
Usage: ``python memory_probe.py MODEL.onnx FEED.npz THREADS RUNS [NEW_TOKENS]`` → one JSON line on stdout.
With NEW_TOKENS, a decoder exported with its key/value cache generates that many tokens after each
prefill, so the peak includes the cache at the full context (the step logic repeats
``edgeprune.runtime.step_inputs``/``next_cache`` because this script must not import edgeprune).
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


def generate(sess, feed, new_tokens):
    """Greedy decode ``new_tokens`` steps after the prefill ``feed``, each fed the previous step's cache."""
    inputs = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    result = sess.run(None, feed)
    if not new_tokens:  # not a decoder (an image model has no attention_mask)
        return
    length = feed["attention_mask"].shape[1]
    for _ in range(new_tokens):
        ids = result[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        length += 1
        step = {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], length), dtype=np.int64),
                "position_ids": np.full((ids.shape[0], 1), length - 1, dtype=np.int64)}
        step.update({n.replace("present", "past_key_values", 1): v for n, v in zip(names, result)
                     if n.startswith("present")})
        result = sess.run(None, {k: v for k, v in step.items() if k in inputs})


def main(model, feed_path, threads, runs, new_tokens=0):
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
        generate(sess, feed, new_tokens)
    return {"baseline_mb": round(baseline, 2), "peak_mb": round(status_mb("VmHWM"), 2),
            "session_peak_mb": round(session_peak, 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))))
