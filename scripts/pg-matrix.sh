#!/usr/bin/env bash
# pg-matrix.sh — the end-to-end, failover and status tests on every other
# supported PostgreSQL major (the full suite runs on Debian's 15).
#
# Usage: scripts/pg-matrix.sh [MAJOR...]     default: 14 16 17 18
#
# For each major: scripts/testenv.sh up with CDC_TESTENV_PG=MAJOR (its own
# PostgreSQL and ClickHouse, fetched once by scripts/pg.sh), the tests named
# by PG_MATRIX_RUN below, then the servers are stopped again so that only one
# pair runs at a time. Prints a line per major with its duration and result;
# exits non-zero when any major failed (after trying every one).
#
# Overrides (environment): GO, GOTESTFLAGS, PG_MATRIX_RUN (a go test -run
# pattern), PG_MATRIX_KEEP=1 (leave each major's servers running).
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-go}"
GOTESTFLAGS="${GOTESTFLAGS:--race -count=1 -timeout 20m}"
PACKAGES=(./cmd/cdc ./internal/daemon ./status ./replication)

# What depends on the server's version: the daemon end to end (in process
# and the real binary: producers with rollbacks, a transaction of several
# batches, SIGTERM and restart, a hot standby taking over, a lost slot),
# failover slots and the standby guard, primary failover (TestPrimaryFailover,
# cmd/cdc/failover_test.go: the slot re-created on the promoted standby), a
# re-created slot's backfill,
# the slot classifier and lookup and every status test (the version-specific
# columns of pg_replication_slots), the publication check.
DEFAULT_RUN='^(TestConcurrentProducersWithRollbacks|TestTransactionLargerThanFiveBatches|TestStopFlushesAndRestartRepeatsNothing'
DEFAULT_RUN+='|TestIdleOutboxOnBusyDatabaseKeepsSlotMoving|TestFailoverSlot|TestSignalsFlushAndExitZero|TestStandbyTakesOverWhenLeaderDies'
DEFAULT_RUN+='|TestLostSlotIsRefusedAndRecovered|TestPrimaryFailover$|TestStatus|TestGather|TestSlotQuery|TestClassifySlot'
DEFAULT_RUN+='|TestReadStandbyGuard|TestStandbyGuard|TestWantFailoverSlot|TestStartWarns|TestLookupSlot|TestSlotHealth'
DEFAULT_RUN+='|TestServerInvalidatedSlotIsLost|TestCheckPublication|TestRunChecksThePublication|TestRecreatedSlotBackfill|TestInterrupted)'
# Only 17+ has failover slots: there the primary failover also runs with the
# slot carried over by the promotion. (On older test servers that test takes
# scripts/pg.sh 17's binaries itself, so running it on 14 and 16 would only
# repeat the 17 run.)
FAILOVER_SLOT_RUN='TestPrimaryFailoverCarriesTheSlot'

majors=("$@")
if [ ${#majors[@]} -eq 0 ]; then
	majors=(14 16 17 18)
fi

# Variables of an earlier `eval "$(scripts/testenv.sh env)"` name the
# servers of another major: every major brings its own.
for v in $(compgen -e); do
	case "$v" in
	CDC_TEST_* | CDC_TESTENV_PG | CDC_TESTENV_DIR | CDC_TESTENV_PGPORT | CDC_TESTENV_PGBIN | CDC_TESTENV_PGDB | \
		CDC_TESTENV_CHPORT | CDC_TESTENV_CHHTTPPORT | CDC_TESTENV_CHINTERPORT) unset "$v" ;;
	esac
done

results=()
failed=0
t_all=$SECONDS
for m in "${majors[@]}"; do
	echo "pg-matrix: PostgreSQL $m" >&2
	t0=$SECONDS
	status=ok
	run="${PG_MATRIX_RUN:-}"
	if [ -z "$run" ]; then
		run="$DEFAULT_RUN"
		if [ "$m" -ge 17 ]; then
			run="${DEFAULT_RUN%)}|$FAILOVER_SLOT_RUN)"
		fi
	fi
	if ! CDC_TESTENV_PG="$m" scripts/testenv.sh up; then
		status="FAIL (servers did not start)"
	else
		# shellcheck disable=SC2046 # GOTESTFLAGS is a list of flags
		if ! (eval "$(CDC_TESTENV_PG="$m" scripts/testenv.sh env)" &&
			"$GO" test $GOTESTFLAGS -run "$run" "${PACKAGES[@]}"); then
			status=FAIL
		fi
		if [ "${PG_MATRIX_KEEP:-}" != 1 ]; then
			CDC_TESTENV_PG="$m" scripts/testenv.sh down || true
		fi
	fi
	[ "$status" = ok ] || failed=1
	results+=("PostgreSQL $m ($(scripts/pg.sh --versions | awk -v m="$m" '$1 == m {print $2}')): $status in $((SECONDS - t0))s")
done

echo "pg-matrix: summary ($((SECONDS - t_all))s in all)" >&2
for r in "${results[@]}"; do
	echo "pg-matrix: $r" >&2
done
exit $failed
