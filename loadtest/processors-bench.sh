#!/usr/bin/env bash
# The processor-throughput figures of README ("Processor throughput on wide workloads"): the
# wide shape and the generator's cohort, progress, achievements and notifications each against
# the no-op group on the same topics, one member, release build.
#
#   eval "$(cargo xtask services | grep ^export)"   # or any Kafka + PostgreSQL
#   loadtest/processors-bench.sh [extra loadtest options]
#
# Prints each row's events/s, the ratio to no-op and the cost per batch stage.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LMS_TEST_KAFKA_BROKERS:?start the services first (cargo xtask services)}"
: "${LMS_TEST_POSTGRES_URL:?start the services first (cargo xtask services)}"
cargo build --release -p loadtest --bin loadtest
bin="${CARGO_TARGET_DIR:-target}/release/loadtest"
common=(--brokers "$LMS_TEST_KAFKA_BROKERS" --postgres "$LMS_TEST_POSTGRES_URL" --instances 1
  --processors progress,achievements,notifications "$@")
echo "== wide: 100 000 lesson completions over 5 000 learners x 20 courses x 10 lessons"
"$bin" processors --shape wide --events 100000 --learners 5000 --courses 20 --lessons 10 "${common[@]}"
echo "== cohort: the generator's learners (2 tenants x 1 000)"
"$bin" processors --shape cohort --learners 1000 "${common[@]}"
