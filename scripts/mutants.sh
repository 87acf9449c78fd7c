#!/usr/bin/env bash
# scripts/mutants.sh — mutation checks: does each rule's test catch the bug
# it exists for? (`make mutants`, issue 23)
#
# Each mutant below is a small, realistic bug that breaks one rule of
# docs/architecture.md (which lists each rule with its guards). The
# script copies the working tree to a scratch directory (the real tree is
# never touched), and for each mutant:
#   1. applies it: every anchor must match exactly once, else the script
#      fails (a mutant that no longer applies is a defect of this script:
#      follow the code it targets and fix the anchor);
#   2. builds the guard tests' package (a mutant that does not compile is a
#      defect too);
#   3. runs only the named fast guard tests, without -race;
#   4. reports KILLED (a guard failed) or SURVIVED (all passed) with the
#      time, and restores the file.
# First the guard tests run once on the unmutated copy: they must exist and
# pass, or no KILLED means anything. A guard that hits the per-mutant
# timeout counts as TIMEOUT, not KILLED: a rule must be caught by a failing
# assertion, not by a hang.
#
# Exit status: 0 when every mutant is KILLED, 1 otherwise.
#
#   scripts/mutants.sh             every mutant
#   scripts/mutants.sh 'sink|lease'  only mutants whose name matches (grep -E)
#   MUTANT_TIMEOUT=120s            per-mutant go test timeout (default 180s)
#
# Needs the test servers (scripts/testenv.sh up) like the integration tests.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
filter=${1:-}
timeout=${MUTANT_TIMEOUT:-180s}
GO=${GO:-go}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/cdc-mutants.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Tracked and untracked (not ignored) files: what is being worked on counts.
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$scratch" -xf -
eval "$("$root/scripts/testenv.sh" env)"
cd "$scratch"

# ---------------------------------------------------------------------------
# The mutants: name, package, guard tests (|-separated), file, then anchor /
# replacement pairs (literal text; anchors may span lines).
names=() pkgs=() guards=() files=() edits=()
mutant() {
	local name=$1 pkg=$2 tests=$3 file=$4
	shift 4
	if (($# == 0 || $# % 2)); then
		echo "mutants.sh: mutant $name: anchors and replacements must come in pairs" >&2
		exit 2
	fi
	names+=("$name") pkgs+=("$pkg") guards+=("$tests") files+=("$file")
	local packed="" a
	for a in "$@"; do packed+="$a"$'\x1e'; done
	edits+=("$packed")
}

# §3.1 / §8: confirm the Commit's TransactionEndLSN, not its CommitLSN.
mutant source-confirms-commit-lsn ./internal/daemon TestSourceConfirmsOnlyWhatIsDurable \
	internal/daemon/source.go \
	'		s.pending, s.hasPending, s.acquired = pipeline.Item{CommitEnd: e.EndLSN}, true, true' \
	'		s.pending, s.hasPending, s.acquired = pipeline.Item{CommitEnd: e.CommitLSN}, true, true'

# §3.1 / §3.6 / §8: the keepalive position only when nothing is in flight
# (checkpoint.Confirmer, which the stream asks).
mutant source-keepalive-while-rows-in-flight ./internal/daemon 'TestSourceConfirmsOnlyWhatIsDurable|TestSlotNeverConfirmedPastBufferedRows' \
	checkpoint/confirm.go \
	'	if !c.open && lsn >= c.handedOn && c.idle > lsn {' \
	'	if !c.open && c.idle > lsn {'

# §3.1 / §8: a keepalive seen inside a transaction does not count.
mutant confirmer-keepalive-inside-transaction ./checkpoint TestConfirmer \
	checkpoint/confirm.go \
	'	if !c.open {
		c.idle = max(c.idle, serverWALEnd)' \
	'	if true {
		c.idle = max(c.idle, serverWALEnd)'

# §3.6: the confirmed position never moves backwards.
mutant confirmer-moves-backwards ./checkpoint TestConfirmer \
	checkpoint/confirm.go \
	'	c.answered = max(c.answered, lsn)
	return c.answered' \
	'	c.answered = lsn
	return lsn'

# §8: only flush advances the slot; a flush left 0 gets pglogrepl's copy of
# the write position (here, as in many clients, the position received).
mutant status-flush-zero ./internal/daemon TestSlotNeverConfirmedPastBufferedRows \
	replication/replication.go \
	'	replyNow   bool' \
	'	replyNow   bool
	received   pglogrepl.LSN' \
	'			return Message{Keepalive: true, ServerWALEnd: ka.ServerWALEnd}, true, nil' \
	'			s.received = max(s.received, ka.ServerWALEnd)
			return Message{Keepalive: true, ServerWALEnd: ka.ServerWALEnd}, true, nil' \
	'			return Message{WALStart: xld.WALStart, ServerWALEnd: xld.ServerWALEnd, Data: xld.WALData}, true, nil' \
	'			s.received = max(s.received, xld.ServerWALEnd)
			return Message{WALStart: xld.WALStart, ServerWALEnd: xld.ServerWALEnd, Data: xld.WALData}, true, nil' \
	'		WALWritePosition: durable,
		WALFlushPosition: durable,
		WALApplyPosition: durable,' \
	'		WALWritePosition: s.received,
		WALFlushPosition: 0,
		WALApplyPosition: 0,'

# §8: XLogData.WALData is reused by the next receive: copy what is kept.
mutant decoder-keeps-wal-buffer ./decoder TestDecodeDoesNotRetainInput \
	decoder/values.go \
	'	return unsafe.String(&a.text[off], len(b))' \
	'	_ = off
	return unsafe.String(&b[0], len(b))'

# §3.1: durable only after the batch is marked.
mutant pipeline-durable-before-marking ./pipeline TestDurableOnlyAfterWholeTransaction \
	pipeline/writer.go \
	'		err := mark()
		if err == nil {
			w.p.advance(pglogrepl.LSN(w.safe.Load()))
		}' \
	'		w.p.advance(pglogrepl.LSN(w.safe.Load()))
		err := mark()'

# §3.1: marked processed only once in ClickHouse.
mutant pipeline-marks-before-insert ./pipeline TestCancel \
	pipeline/pipeline.go \
	'		res, err = p.sink.Write(ctx, b.rows)' \
	'		ids := make([]int64, len(b.rows))
		for i := range b.rows {
			ids[i] = b.rows[i].ID
		}
		if err := p.marker.MarkProcessed(ctx, ids, b.xids); err != nil {
			return err
		}
		res, err = p.sink.Write(ctx, b.rows)'

# §3.1: a transaction's end rides on the marking of its last batch.
mutant pipeline-commit-durable-before-its-last-batch ./pipeline TestPositionBatchDoesNotWaitForMarking \
	pipeline/writer.go \
	'			case w.marking != nil:
				w.safe.Store(uint64(b.safe))' \
	'			case false:
				w.safe.Store(uint64(b.safe))'

# §3.6: a batch is durable when marked, not when the next insert succeeds.
mutant pipeline-advances-only-at-next-batch ./pipeline TestDurableWhenMarkedWhileNextInsertWaits \
	pipeline/writer.go \
	'		err := mark()
		if err == nil {
			w.p.advance(pglogrepl.LSN(w.safe.Load()))
		}' \
	'		err := mark()'

# §3.2: re-sent rows after a restart are checked by id.
mutant sink-no-check-after-restart ./sink 'TestRecoverSkipsStoredRows|TestBigBatchIsCheckedAfterARestart' \
	sink/clickhouse.go \
	'		c.hasHWM = true
	}
	if err := rows.Err(); err != nil {' \
	'		c.hasHWM = false
	}
	if err := rows.Err(); err != nil {'

# §3.2: rows of an insert whose outcome is unknown are checked when retried.
mutant sink-no-check-after-uncertain-insert ./sink TestFailedInsertAfterAFlushIsRetriedByID \
	sink/clickhouse.go \
	'		if !c.hasHWM || c.hwm.Less(last) {
			c.hwm, c.hasHWM = last, true
		}' \
	'		_ = last'

# §3.2 / §8: an INSERT still running on the server is waited for.
mutant sink-no-running-insert-fence ./sink TestRecoverWaitsForARunningInsert \
	sink/fence.go \
	'func (c *ClickHouse) awaitInflightInserts(ctx context.Context) error {' \
	'func (c *ClickHouse) awaitInflightInserts(ctx context.Context) error {
	if true {
		return nil
	}'

# §3.2 / §3.11 on a cluster: a read that decides what is stored waits until
# no quorum insert is open (a sequentially consistent read leaves out a part
# whose quorum is open; if the quorum closes before the next INSERT, its rows
# are stored twice). The guard starts a private two-replica cluster (~30 s).
mutant sink-reads-past-open-quorum ./sink TestRecoveryWaitsForAnOpenQuorum \
	sink/quorum.go \
	'func (c *ClickHouse) awaitSettledQuorum(ctx context.Context) error {' \
	'func (c *ClickHouse) awaitSettledQuorum(ctx context.Context) error {
	if true {
		return nil
	}'

# insert_quorum: auto is sized on the replicas ZooKeeper lists, never on the
# 0 that system.replicas reports while ZooKeeper is unreachable (auto would
# make that a quorum of 1: none).
mutant sink-quorum-sized-without-zookeeper ./sink TestQuorumIsSizedOnlyWithZooKeeper \
	sink/replicated.go \
	'		if m.Replicas == 0 {' \
	'		if false && m.Replicas == 0 {'

# Quorum inserts are serial where the server could run them in parallel
# (20.10+ default: later inserts get in while a quorum is open).
mutant sink-parallel-quorum ./sink TestQuorumSettings \
	sink/quorum.go \
	'		s["insert_quorum_parallel"] = 0' \
	'		_ = s'

# §3.7: poison rows are isolated by bisection, the others delivered.
mutant sink-no-bisection ./sink TestWriteIsolatesRejectedRows \
	sink/clickhouse.go \
	'	if class == TooManyPartitions {
		c.log.Warn(' \
	'	if class == RowData {
		for _, r := range rows {
			res.Rejected = append(res.Rejected, Rejected{ID: r.id, Pos: r.pos, Err: err})
		}
		return nil
	}
	if class == TooManyPartitions {
		c.log.Warn('

# §3.12: already stored = same id and same fingerprint.
mutant sink-identity-by-id-only ./sink TestReusedIDIsANewRow \
	sink/clickhouse.go \
	'		if fp == want || fp == 0 {' \
	'		if _, _ = fp, want; true {'

# §3.13: unknown errors retry; only named row-data codes are poison.
mutant errclass-default-row-data ./sink 'TestClassify|TestServerErrorThatIsNotAboutTheRowsIsRetried' \
	sink/errclass.go \
	'	case rowDataCodes[code]:
		return RowData
	}
	return Retry' \
	'	case rowDataCodes[code]:
		return RowData
	}
	return RowData'

# §3.13: after a server-side failure, look before writing again.
mutant sink-resends-without-looking ./sink TestViewThatThrowsStoresNothingTwice \
	sink/clickhouse.go \
	'		if rows, lookErr = c.withoutStored(ctx, rows, res); lookErr != nil {' \
	'		if lookErr = nil; lookErr != nil {'

# §3.10: the sink asks the fence before every insert and block.
mutant sink-fence-always-passes ./sink TestFenceStopsEveryInsert \
	sink/clickhouse.go \
	'	if c.opts.Fence == nil {
		return nil
	}' \
	'	if true {
		return nil
	}'

# §3.10: a marking checks its term in the same statement.
mutant marking-ignores-term ./internal/lease TestTakeoverFencesTheOldHolder \
	checkpoint/checkpoint.go \
	'strings.Join(ctes, ",\n\t  "), q, fenceOK, visibleOK, fenceOK, visibleOK)' \
	'strings.Join(ctes, ",\n\t  "), q, "true", visibleOK, fenceOK, visibleOK)'

# §3.1 / §3.11: a marking sees every row it marks: it waits until the
# rows' transactions are visible (decoded is not yet visible).
mutant marking-ignores-visibility ./checkpoint TestMarkingWaitsUntilItsTransactionsAreVisible \
	checkpoint/checkpoint.go \
	'		visibleOK = "(SELECT ok FROM visible)"' \
	'		visibleOK = "true"'

mutant pipeline-forgets-xids ./pipeline TestMarkingNamesItsTransactions \
	pipeline/batcher.go \
	'	if it.Xid != 0 && (len(cur.xids) == 0 || cur.xids[len(cur.xids)-1] != it.Xid) {' \
	'	if false {'

mutant source-drops-xid ./internal/daemon TestSourceRowsCarryTheirTransaction \
	internal/daemon/source.go \
	'pipeline.Item{Row: r, Size: size, Xid: s.txnXid}' \
	'pipeline.Item{Row: r, Size: size}'

# §3.10: a successor waits out the old holder's lease before writing.
mutant lease-successor-does-not-wait ./internal/lease TestTakeoverFencesTheOldHolder \
	internal/lease/lease.go \
	'	if remaining > 0 && mayStillWrite(prevHolder, Self()) {' \
	'	if false && remaining > 0 && mayStillWrite(prevHolder, Self()) {'

# §3.4 / §8: the backfill list is read in the slot's exported snapshot.
mutant backfill-outside-snapshot ./internal/daemon TestBackfillListIsReadInTheSlotSnapshot \
	backfill/backfill.go \
	'	if _, err := tx.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '"'"'%s'"'"'", snapshot)); err != nil {' \
	'	if _, err := tx.Exec(ctx, "SELECT $1::text", snapshot); err != nil {'

# §3.11 / §3.12: a re-created slot's backfill checks every row.
mutant backfill-checks-only-near-hwm ./internal/daemon TestRecreatedSlotBackfillRecognisesDeliveredRows \
	internal/daemon/bootstrap.go \
	'	w, err := sink.Open(ctx, d.sinkOptions(true))' \
	'	w, err := sink.Open(ctx, d.sinkOptions(false))'

# §3.7 / §3.2: a re-driven row keeps the stream position it failed at.
mutant redrive-at-position-zero ./internal/daemon TestRedrivenRowKeepsItsStreamPosition \
	backfill/backfill.go \
	'	if li < 0 || si < 0 {
		return sink.Position{LSN: 0, Seq: uint64(id)}' \
	'	if true {
		return sink.Position{LSN: 0, Seq: uint64(id)}'

# §3.1: a publication that leaves outbox rows out is refused before the slot.
mutant daemon-skips-publication-check ./internal/daemon TestRunChecksThePublicationBeforeTheSlot \
	internal/daemon/bootstrap.go \
	'	if err := replication.CheckPublication(ctx, d.pool, d.cfg.Postgres.Publication, schema, name); err != nil {' \
	'	if err := error(nil); err != nil && schema != name {'

# §3.1: a publication of other tables too is refused (their rows stop the stream).
mutant publication-allows-other-tables ./replication TestCheckPublication \
	replication/publication.go \
	'	case others != nil:' \
	'	case false && others != nil:'

# §3.1: a row of another relation ends the session, never skipped.
mutant source-skips-foreign-rows ./internal/daemon TestSourceRefusesRowsOfAnotherRelation \
	internal/daemon/source.go \
	'		idx, err := s.idColumn(e.Relation)
		if err != nil {
			return fmt.Errorf("insert at %s: %w", msg.WALStart, err)
		}' \
	'		idx, err := s.idColumn(e.Relation)
		if err != nil {
			return nil
		}'

# §3.5: the queue of full batches is bounded (a ClickHouse outage fills it and
# the batcher stops taking input).
mutant pipeline-unbounded-queue ./pipeline 'TestBoundedMemory|TestGroupCommit' \
	pipeline/batcher.go \
	'	if !b.isFull() || b.fullQueued >= b.opts.Queue {' \
	'	if !b.isFull() {'

# §3.14: a batch is cut at the byte cap, whatever the row size.
mutant pipeline-no-byte-cap ./pipeline 'TestCut|TestBoundedBytes' \
	pipeline/batcher.go \
	'	if len(b.cur.rows) > 0 && b.cur.bytes+int64(it.Size) > b.opts.MaxBytes {' \
	'	if false {' \
	'	return b.holding || len(b.cur.rows) >= b.opts.MaxRows || b.cur.bytes >= b.opts.MaxBytes' \
	'	return b.holding || len(b.cur.rows) >= b.opts.MaxRows'

# §3.9: closing the input (SIGTERM's drain) delivers what is buffered.
mutant pipeline-drops-buffer-on-close ./pipeline TestCloseFlushesEverything \
	pipeline/batcher.go \
	'		next := b.next()
		if next == nil {' \
	'		next := b.next()
		if next == nil || b.closing {'

# §3.8: one leader at a time: the lease's lock is exclusive.
mutant lease-ignores-lock ./internal/lease TestTakeoverFencesTheOldHolder \
	internal/lease/lease.go \
	'	if !got {
		return false, nil
	}' \
	'	_ = got'

# §3.7: the rows of a failed INSERT kept open come again through Write,
# which isolates a row the server refuses, not into another open INSERT.
mutant sink-appends-failed-open-insert-again ./internal/daemon TestPoisonRowInABacklogIsIsolated \
	sink/append.go \
	'		(!c.hasFailedOpen || c.failedOpen.Less(rows[0].Pos))' \
	'		true'

# §3.1: the rows of an INSERT kept open are marked only once it is committed.
mutant pipeline-marks-appended-rows-before-commit ./pipeline TestAppendBacklogIsOneInsert \
	pipeline/writer.go \
	'		o.premark.mark(ids, b.xids)' \
	'		_ = p.marker.MarkProcessed(ctx, ids, b.xids)'

# §3.1: a position that comes while an INSERT is open waits for its commit.
mutant pipeline-position-durable-before-open-insert ./pipeline TestAppendBacklogIsOneInsert \
	pipeline/writer.go \
	'			case w.open != nil:
				w.open.safe = b.safe' \
	'			case w.open != nil:
				w.p.advance(b.safe)'

# §3.1: the markings of a failed open INSERT are rolled back.
mutant pipeline-keeps-markings-of-failed-insert ./pipeline TestAppendFailureEndsWithErrResend \
	pipeline/writer.go \
	'	if w.open != nil {
		w.open.premark.rollback()' \
	'	if w.open != nil {
		_ = w.open.premark.wait()'

# §3.10: a Marking commits only while its lease is not taken over.
mutant marking-commit-ignores-term ./checkpoint TestMarkingIsSeenOnlyOnCommit \
	checkpoint/marking.go \
	'		if tag.RowsAffected() != int64(len(fence)) {' \
	'		if false && tag.RowsAffected() != int64(len(fence)) {'

# Group commit (docs/configuration.md): the rows already in the WAL when the
# stream began are a backlog however slowly they come (one INSERT, not one
# per batch)...
mutant daemon-backlog-from-first-message ./internal/daemon TestSlowBacklogIsAppended \
	internal/daemon/source.go \
	'	s.catchUpTo = catchUpEnd(st.ServerEnd())' \
	'	s.catchUpTo = 0'

# ... and a pause among them does not commit their INSERT early.
mutant pipeline-catch-up-insert-closes-on-pause ./internal/daemon TestSlowBacklogIsAppended \
	pipeline/writer.go \
	'		w.linger.Reset(time.Until(o.started.Add(p.opts.openFor)))' \
	'		w.linger.Reset(2 * p.opts.linger)'

# §3.10: an INSERT given up when the stream ends (its lease lost) ends on
# the server too; left running, the successor's recovery waits for it.
mutant sink-abandon-leaves-insert-running ./sink TestAbandonEndsTheInsertOnTheServer \
	sink/append.go \
	'	if c.app != nil {
		c.abandon(c.app.last)
	}' \
	'	c.app = nil'

# ... and the pipeline gives it up when it stops on an error with it open.
mutant pipeline-stop-leaves-insert-open ./pipeline TestStopWithInsertOpenAbandonsIt \
	pipeline/writer.go \
	'		w.app.Abandon()' \
	'		_ = w.app'

# ---------------------------------------------------------------------------

# apply FILE ANCHOR REPLACEMENT: replace the one occurrence of ANCHOR.
apply() {
	ANCHOR=$2 REPL=$3 perl -0777 -e '
		my $f = shift;
		open(my $in, "<", $f) or die "$f: $!\n";
		local $/; my $s = <$in>; close $in;
		my $n = () = $s =~ /\Q$ENV{ANCHOR}\E/g;
		die "anchor found $n times in $f (want 1):\n$ENV{ANCHOR}\n" if $n != 1;
		$s =~ s/\Q$ENV{ANCHOR}\E/$ENV{REPL}/;
		open(my $out, ">", $f) or die "$f: $!\n";
		print $out $s;' "$1"
}

selected=()
for i in "${!names[@]}"; do
	if [[ -z $filter ]] || grep -Eq -- "$filter" <<<"${names[$i]}"; then
		selected+=("$i")
	fi
done
if ((${#selected[@]} == 0)); then
	echo "mutants.sh: no mutant matches '$filter'" >&2
	exit 2
fi

# Baseline: each package's guards exist and pass on the unmutated copy.
declare -A pkgTests=()
for i in "${selected[@]}"; do
	for t in ${guards[$i]//|/ }; do
		case "|${pkgTests[${pkgs[$i]}]:-}|" in
		*"|$t|"*) ;;
		*) pkgTests[${pkgs[$i]}]+="${pkgTests[${pkgs[$i]}]:+|}$t" ;;
		esac
	done
done
echo "== baseline: the guard tests on the unmutated tree"
for pkg in "${!pkgTests[@]}"; do
	pattern="^(${pkgTests[$pkg]})\$"
	listed=$($GO test -list "$pattern" "$pkg" | grep -E '^(Test|Fuzz)' || true)
	for t in ${pkgTests[$pkg]//|/ }; do
		if ! grep -qx -- "$t" <<<"$listed"; then
			echo "mutants.sh: guard test $t not found in $pkg" >&2
			exit 1
		fi
	done
	start=$SECONDS
	if ! out=$($GO test -count=1 -timeout "$timeout" -run "$pattern" "$pkg" 2>&1); then
		echo "$out" | tail -40
		echo "mutants.sh: guard tests fail on the unmutated tree in $pkg: fix them first" >&2
		exit 1
	fi
	printf '   %-20s ok  %4ds  %s\n' "$pkg" $((SECONDS - start)) "${pkgTests[$pkg]}"
done

echo "== mutants"
printf '%-46s %-8s %6s  %s\n' MUTANT RESULT TIME "GUARD TESTS"
failed=0 total_start=$SECONDS
for i in "${selected[@]}"; do
	name=${names[$i]} pkg=${pkgs[$i]} file=${files[$i]}
	cp -p "$file" "$file.orig"
	IFS=$'\x1e' read -r -d '' -a pairs < <(printf '%s\0' "${edits[$i]}") || true
	result="" start=$SECONDS
	for ((k = 0; k < ${#pairs[@]}; k += 2)); do
		if ! apply "$file" "${pairs[$k]}" "${pairs[$((k + 1))]}"; then
			result=NOT-APPLIED
			break
		fi
	done
	if [[ -z $result ]] && ! build=$($GO test -count=1 -run '^$' "$pkg" 2>&1); then
		echo "$build" | head -20
		result=NO-BUILD
	fi
	if [[ -z $result ]]; then
		if out=$($GO test -count=1 -timeout "$timeout" -run "^(${guards[$i]})\$" "$pkg" 2>&1); then
			result=SURVIVED
		elif grep -q 'panic: test timed out' <<<"$out"; then
			result=TIMEOUT
		else
			result=KILLED
		fi
	fi
	mv "$file.orig" "$file"
	printf '%-46s %-8s %5ds  %s %s\n' "$name" "$result" $((SECONDS - start)) "$pkg" "${guards[$i]}"
	if [[ $result == KILLED ]]; then
		# What caught it: the last test message before the failure.
		grep -E '^[[:space:]]+[a-z_]+_test\.go:[0-9]+:' <<<"$out" | tail -1 | sed -E 's/^[[:space:]]+/      /' | cut -c1-150 || true
	fi
	[[ $result == KILLED ]] || failed=$((failed + 1))
done
echo "== ${#selected[@]} mutants, $failed not killed, $((SECONDS - total_start))s"
((failed == 0))
