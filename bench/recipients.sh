#!/usr/bin/env bash
# Recipient validation: the cost of one lookup per RCPT (file, LDAP cached, LDAP
# uncached, against a private slapd on this machine) as the difference of the mean RCPT
# round trip through Portcullis with and without a table; and what a dictionary attack
# of 1,000 unknown addresses costs the backend (connections, RCPTs) without and with a
# table. Needs slapd and ldap-utils.
#
#   bench/recipients.sh [RCPTS]        (PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
[ "${PROFILE:-}" = release ] && profile=(--release)
RCPT_BENCH_N="${1:-2000}" cargo test "${profile[@]}" --test e2e recipients_bench -- --ignored --nocapture --test-threads 1 2>&1 |
    grep -vE '^(running|test result|$)'
