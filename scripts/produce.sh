#!/usr/bin/env bash
# produce.sh — write realistic events into the outbox, the way an application
# does: INSERTs inside its own transactions, of random size, some of which roll
# back. Used by `make demo` (scripts/demo.sh); runnable on its own against any
# database that `cdc migrate` has prepared.
#
# Usage: scripts/produce.sh --url URL [--seconds 10] [--rows-per-sec 3000]
#                           [--table public.event_outbox]
#                           [--rolled-back FILE] [--summary FILE]
#
#   --url           PostgreSQL connection URL (or $PRODUCE_URL)
#   --seconds       how long to produce (default 10)
#   --rows-per-sec  offered load in rows per second, paced (default 3000)
#   --table         outbox table (default public.event_outbox)
#   --rolled-back   append the ids of rolled-back rows to FILE (one per line);
#                   those rows must never reach ClickHouse
#   --summary       write key=value counters to FILE when done
#
# Transactions: mostly 1–20 rows, some 20–200, about 1% of 1,200–3,000 rows
# (larger than one default batch of 1,000); about 12% roll back entirely and
# about 6% commit after rolling back to a savepoint (part of their rows is
# discarded). One psql session runs them all; the script counts what it
# committed and prints a summary line at the end.
#
# Environment: PSQL (psql binary, default: psql on PATH).
set -euo pipefail

URL="${PRODUCE_URL:-}"
SECONDS_TO_RUN=10
RATE=3000
TABLE="public.event_outbox"
ROLLED_FILE=""
SUMMARY_FILE=""
PSQL="${PSQL:-psql}"

usage() {
	sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--url) URL="$2"; shift 2 ;;
	--seconds) SECONDS_TO_RUN="$2"; shift 2 ;;
	--rows-per-sec) RATE="$2"; shift 2 ;;
	--table) TABLE="$2"; shift 2 ;;
	--rolled-back) ROLLED_FILE="$2"; shift 2 ;;
	--summary) SUMMARY_FILE="$2"; shift 2 ;;
	-h | --help) usage ;;
	*) echo "produce: unknown argument $1" >&2; usage ;;
	esac
done
[ -n "$URL" ] || { echo "produce: --url is required" >&2; usage; }
[[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ ]] || { echo "produce: --seconds must be a whole number" >&2; exit 2; }
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "produce: --rows-per-sec must be a positive whole number" >&2; exit 2; }
[[ "$TABLE" =~ ^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$ ]] || { echo "produce: --table must be [schema.]name in lower case" >&2; exit 2; }
command -v "$PSQL" >/dev/null 2>&1 || { echo "produce: psql not found (set PSQL)" >&2; exit 1; }

WORK="$(mktemp -d)"
FIFO="$WORK/sql"
mkfifo "$FIFO"
PSQL_PID=""
cleanup() {
	exec 3>&- 2>/dev/null || true
	if [ -n "$PSQL_PID" ] && kill -0 "$PSQL_PID" 2>/dev/null; then
		kill "$PSQL_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# Only the RETURNING ids of rows that get rolled back are printed (-At, -q: no
# command tags): psql's stdout is exactly the list of rolled-back ids.
OUT="${ROLLED_FILE:-/dev/null}"
"$PSQL" "$URL" -X -q -At -v ON_ERROR_STOP=1 <"$FIFO" >>"$OUT" 2>"$WORK/psql.err" &
PSQL_PID=$!
exec 3>"$FIFO"

# insert_sql N [RETURNING]: one multi-row INSERT of N events, as a producer
# would write them (no bookkeeping columns: status, created_at… default).
insert_sql() {
	local n="$1" returning="${2:-}"
	cat <<EOF
INSERT INTO $TABLE (event_type, event_date_time, environment, event_context, metadata_version)
SELECT t.event_type,
       (now() AT TIME ZONE 'utc') - make_interval(secs => random() * 3),
       CASE WHEN random() < 0.9 THEN 'production' ELSE 'staging' END,
       jsonb_strip_nulls(jsonb_build_object(
           'user_id', 1 + floor(random() * 50000)::int,
           'order_id', CASE WHEN t.event_type LIKE 'order.%' OR t.event_type LIKE 'payment.%'
                            THEN 'ORD-' || lpad(floor(random() * 1e7)::bigint::text, 7, '0') END,
           'amount', CASE WHEN t.event_type IN ('order.created', 'order.paid', 'payment.failed')
                          THEN round((random() * 500)::numeric, 2) END,
           'currency', CASE WHEN t.event_type IN ('order.created', 'order.paid', 'payment.failed')
                            THEN (ARRAY['EUR', 'USD', 'GBP'])[1 + floor(random() * 3)::int] END,
           'items', CASE WHEN t.event_type IN ('order.created', 'cart.updated')
                         THEN jsonb_build_array(jsonb_build_object(
                                  'sku', 'SKU-' || lpad(floor(random() * 10000)::int::text, 5, '0'),
                                  'qty', 1 + floor(random() * 3)::int)) END,
           'reason', CASE WHEN t.event_type = 'payment.failed' THEN 'card_declined' END,
           'user_agent', 'Mozilla/5.0 (X11; Linux x86_64) demo-producer',
           'request_id', gen_random_uuid()::text)),
       CASE WHEN random() < 0.8 THEN 2 ELSE 1 END
FROM generate_series(1, $n) AS g(i)
CROSS JOIN LATERAL (SELECT (ARRAY['order.created', 'order.paid', 'order.shipped', 'user.signed_up',
                                  'cart.updated', 'payment.failed'])[1 + floor(random() * 6 + 0 * g.i)::int] AS event_type) AS t -- g.i: one draw per row
$returning;
EOF
}

# txn_size: mostly small, some medium, now and then one larger than a batch.
txn_size() {
	local r=$((RANDOM % 100))
	if [ "$r" -lt 1 ]; then
		echo $((1200 + RANDOM % 1801))
	elif [ "$r" -lt 26 ]; then
		echo $((20 + RANDOM % 181))
	else
		echo $((1 + RANDOM % 20))
	fi
}

txns=0 committed_txns=0 rolled_txns=0 partial_txns=0 committed_rows=0 rolled_rows=0
start="${EPOCHREALTIME/./}" # microseconds
deadline=$((start + SECONDS_TO_RUN * 1000000))

while :; do
	now="${EPOCHREALTIME/./}"
	[ "$now" -lt "$deadline" ] || break
	# Pace: stay at RATE rows per second of elapsed time.
	ahead_us=$(((committed_rows + rolled_rows) * 1000000 / RATE - (now - start)))
	if [ "$ahead_us" -gt 20000 ]; then
		sleep "$(printf '0.%06d' $((ahead_us > 999999 ? 999999 : ahead_us)))"
		continue
	fi
	n="$(txn_size)"
	r=$((RANDOM % 100))
	txns=$((txns + 1))
	if [ "$r" -lt 12 ]; then
		# The application failed after writing its events: ROLLBACK.
		{
			echo "BEGIN;"
			insert_sql "$n" "RETURNING id"
			echo "ROLLBACK;"
		} >&3
		rolled_txns=$((rolled_txns + 1))
		rolled_rows=$((rolled_rows + n))
	elif [ "$r" -lt 18 ] && [ "$n" -ge 2 ]; then
		# Part of the work is undone (ROLLBACK TO SAVEPOINT), the rest commits.
		keep=$((n / 2)) drop=$((n - n / 2))
		{
			echo "BEGIN;"
			insert_sql "$keep"
			echo "SAVEPOINT undo_part;"
			insert_sql "$drop" "RETURNING id"
			echo "ROLLBACK TO SAVEPOINT undo_part;"
			echo "COMMIT;"
		} >&3
		partial_txns=$((partial_txns + 1))
		committed_txns=$((committed_txns + 1))
		committed_rows=$((committed_rows + keep))
		rolled_rows=$((rolled_rows + drop))
	else
		{
			echo "BEGIN;"
			insert_sql "$n"
			echo "COMMIT;"
		} >&3
		committed_txns=$((committed_txns + 1))
		committed_rows=$((committed_rows + n))
	fi
	if ! kill -0 "$PSQL_PID" 2>/dev/null; then
		break
	fi
done

exec 3>&-
rc=0
wait "$PSQL_PID" || rc=$?
PSQL_PID=""
if [ "$rc" -ne 0 ]; then
	echo "produce: psql failed (exit $rc):" >&2
	cat "$WORK/psql.err" >&2
	exit 1
fi

elapsed_ms=$(((${EPOCHREALTIME/./} - start) / 1000))
summary="transactions=$txns committed_txns=$committed_txns rolled_back_txns=$rolled_txns partial_rollback_txns=$partial_txns committed_rows=$committed_rows rolled_back_rows=$rolled_rows elapsed_ms=$elapsed_ms"
echo "produce: $summary"
if [ -n "$SUMMARY_FILE" ]; then
	tr ' ' '\n' <<<"$summary" >"$SUMMARY_FILE"
fi
