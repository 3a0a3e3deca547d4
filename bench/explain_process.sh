#!/usr/bin/env bash
# `nla explain` as a whole process on the 40-token prompt of bench/prompt_40.txt (bench_nla.PROMPT_40), for
# bench/process_time.py; extra arguments (options, key=value overrides) are passed on. Usage:
#   python bench/process_time.py -n 3 --vs "bench/explain_process.sh max_new_tokens=200" -- bench/explain_process.sh
cd "$(dirname "$0")/.."
PROMPT=$(cat bench/prompt_40.txt)
exec .venv/bin/nla explain "$PROMPT" "$@"
