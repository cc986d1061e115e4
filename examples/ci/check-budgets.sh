#!/usr/bin/env bash
# Fail the build when a model misses its latency budget on any listed device profile.
#
#   examples/ci/check-budgets.sh MODEL.onnx LATENCY_MS [PROFILE ...]
#
# Every profile gets a JUnit XML file (for the CI's test report) and a Markdown table; the
# tables are appended to $GITHUB_STEP_SUMMARY when it is set. Exit 1 when any profile FAILs
# or is UNCERTAIN (its predicted band straddles the budget), 2 on bad input.
set -uo pipefail

model=${1:?usage: check-budgets.sh MODEL.onnx LATENCY_MS [PROFILE ...]}
budget=${2:?usage: check-budgets.sh MODEL.onnx LATENCY_MS [PROFILE ...]}
shift 2
profiles=("${@:-host}")
out=${EDGEPRUNE_REPORTS:-edgeprune-reports}
mkdir -p "$out"

status=0
for profile in "${profiles[@]}"; do
    edgeprune check "$model" --profile "$profile" --latency-ms "$budget" --percentile p90 \
        --junit "$out/$profile.xml" --markdown "$out/$profile.md" --json "$out/$profile.json"
    code=$?
    if [ "$code" -eq 2 ]; then exit 2; fi
    if [ "$code" -ne 0 ]; then status=1; fi
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$out/$profile.md" >> "$GITHUB_STEP_SUMMARY"; fi
done
exit "$status"
