#!/usr/bin/env bash
# `nla explain` as a whole process on the 40-token prompt of bench/prompt_40.txt (bench_nla.PROMPT_40), for
# farm-bench; extra arguments (options, key=value overrides) are passed on. Usage:
#   farm-bench -n 3 --timeout 900 -- bench/explain_process.sh --vs "bench/explain_process.sh max_new_tokens=200"
cd "$(dirname "$0")/.."
PROMPT=$(cat bench/prompt_40.txt)
exec .venv/bin/nla explain "$PROMPT" "$@"
