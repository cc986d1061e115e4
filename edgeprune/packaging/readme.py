"""The bundle's README.md: how to load what is in this bundle, written from its real file names and inputs."""

from __future__ import annotations

from typing import Any

ANDROID_EP = {"NNAPI": "options.addNnapi()", "XNNPACK": 'options.addXnnpack(mapOf("intra_op_num_threads" to "4"))'}
IOS_EP = {"CoreML": "try options.appendCoreMLExecutionProvider(with: ORTCoreMLExecutionProviderOptions())",
          "XNNPACK": "try options.appendXnnpackExecutionProvider(with: ORTXnnpackExecutionProviderOptions())"}


def bundle_readme(manifest: dict[str, Any]) -> str:
    """Markdown for a person wiring the bundle into an app; every name in it comes from ``manifest``."""
    main = manifest["models"][0]
    name, threads = main["file"], manifest["profile"]["threads"]
    lines = [f"# {manifest['source']['name']} for {manifest['profile']['name']}", "",
             f"Packaged by edgeprune {manifest['edgeprune_version']} for {manifest['profile']['description']}", "",
             "| file | MB | what |", "|---|---|---|"]
    for model in manifest["models"]:
        shapes = ", ".join(f"`{k}` {v}" for k, v in model["inputs"].items())
        lines.append(f"| `{model['file']}` | {model['size_mb']:.2f} | ORT-format model ({model['what']}); inputs "
                     f"{shapes} |")
    lines.append(f"| `{manifest['config']['file']}` | — | operators and types the model needs, for a minimal "
                 "onnxruntime build |")
    for extra in manifest["files"]:
        lines.append(f"| `{extra}` | — | tokenizer / preprocessing, as the model was trained with |")
    lines += ["", f"Bundle size: {manifest['bundle_size_mb']:.2f} MB. Hashes: `bundle.json`.", "",
              "## Execution providers", "", "| provider | nodes taken | partitions | verdict | why |",
              "|---|---|---|---|---|"]
    for ep in manifest["execution_providers"]:
        lines.append(f"| {ep['provider']} | {ep['supported_nodes']}/{ep['nodes']} | {ep['partitions']} | "
                     f"{ep['verdict']} | {ep['reason']} |")
    if not manifest["execution_providers"]:
        lines.append("| (the profile lists none) | | | | the CPU execution provider runs everything |")
    usable = {ep["provider"] for ep in manifest["execution_providers"] if ep["verdict"] != "avoid"}
    lines += ["", "## Android (Kotlin, `com.microsoft.onnxruntime:onnxruntime-android`)", "", "```kotlin",
              "val env = OrtEnvironment.getEnvironment()",
              "val options = OrtSession.SessionOptions()",
              f"options.setIntraOpNumThreads({threads})"]
    lines += [ANDROID_EP[ep] for ep in ANDROID_EP if ep in usable] or ["// CPU execution provider: no listed "
                                                                        "accelerator is worth its copies here"]
    lines += [f'val session = env.createSession(assets.open("{name}").readBytes(), options)', "```", "",
              "## iOS (Swift, pod `onnxruntime-objc`)", "", "```swift",
              "let env = try ORTEnv(loggingLevel: .warning)",
              "let options = try ORTSessionOptions()",
              f"try options.setIntraOpNumThreads({threads})"]
    lines += [IOS_EP[ep] for ep in IOS_EP if ep in usable] or ["// CPU execution provider: no listed accelerator "
                                                                "is worth its copies here"]
    stem, suffix = name.rsplit(".", 1)
    lines += [f'let path = Bundle.main.path(forResource: "{stem}", ofType: "{suffix}")!',
              "let session = try ORTSession(env: env, modelPath: path, sessionOptions: options)", "```", "",
              "## Python (`pip install onnxruntime`)", "", "```python", "import onnxruntime as ort", "",
              "options = ort.SessionOptions()", f"options.intra_op_num_threads = {threads}",
              f'session = ort.InferenceSession("{name}", options, providers=["CPUExecutionProvider"])',
              "```", "", "## A minimal onnxruntime for this model", "",
              "From an onnxruntime source checkout, build only the operators and types this model uses:", "",
              "```sh", f"./build.sh --minimal_build --include_ops_by_config {manifest['config']['file']} "
              "--enable_reduced_operator_type_support --config MinSizeRel  # plus --android/--ios options", "```"]
    fixed = manifest["fixed_shape_variant"]
    lines += ["", f"Fixed-shape variant: {fixed['why']}", ""]
    return "\n".join(lines)
