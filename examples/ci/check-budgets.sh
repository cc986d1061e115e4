#!/usr/bin/env bash
# Fail the build when a model misses its latency budget on any listed device profile.
#
#   examples/ci/check-budgets.sh MODEL.onnx LATENCY_MS [PROFILE ...]
#
# Every profile gets a JUnit XML file (for the CI's test report) and a Markdown table; the
# tables are appended to $GITHUB_STEP_SUMMARY when it is set. Exit codes are edgeprune's own:
# 0 every profile passes, 1 a profile FAILs or is UNCERTAIN (its predicted band straddles the
# budget), 2 bad input, 3 an internal error (a crash is never reported as a budget failure),
# 130 interrupted.
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
    case "$code" in
        0) ;;
        1) status=1 ;;
        *) echo "edgeprune check stopped with exit code $code on profile $profile (2 bad input, 3 internal error," \
                "130 interrupted)" >&2
           exit "$code" ;;
    esac
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$out/$profile.md" >> "$GITHUB_STEP_SUMMARY"; fi
done
exit "$status"
