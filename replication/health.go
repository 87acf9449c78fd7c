package replication

import (
	"errors"
	"fmt"
)

// SlotClass is the verdict on a slot: whether cdc can stream every change
// from it, and if not, what kind of problem keeps it from doing so.
type SlotClass int

// Slot classes. `cdc status` maps them to its exit codes; `cdc run` stops on
// SlotLost (only an operator can recover it) and retries the others.
const (
	SlotUsable   SlotClass = iota // streams every change; a Warning may still need attention
	SlotMissing                   // the slot does not exist (cdc run creates it)
	SlotLost                      // invalidated: changes it needed are gone, it can never stream again
	SlotUnusable                  // exists but is not cdc's: physical, another plugin, another database
)

func (c SlotClass) String() string {
	switch c {
	case SlotUsable:
		return "usable"
	case SlotMissing:
		return "missing"
	case SlotLost:
		return "lost"
	case SlotUnusable:
		return "unusable"
	}
	return fmt.Sprintf("SlotClass(%d)", int(c))
}

// ErrSlotUnusable is wrapped by SlotHealth.Err for a slot of that name that
// cdc cannot stream from (physical, another plugin, another database).
var ErrSlotUnusable = errors.New("replication slot is not usable by cdc")

// SlotHealth is the one rule deciding whether cdc can stream from a slot.
// `cdc run` (SlotInfo.CheckUsable), the daemon's slot gauges and `cdc status`
// all ask it, so they never disagree about a slot.
type SlotHealth struct {
	Class SlotClass
	// Reason is one line naming the slot, what is wrong and the fix; empty
	// when Class is SlotUsable.
	Reason string
	// Warning is one line about a usable slot that needs attention soon
	// (wal_status extended or unreserved); empty otherwise.
	Warning string
}

// Health classifies the slot. The order matters: a lost slot is reported as
// lost even when it is also of another database (dropping it is the fix
// either way), and only an existing slot has a plugin or database to check.
func (s SlotInfo) Health() SlotHealth {
	if !s.Exists {
		return SlotHealth{Class: SlotMissing, Reason: fmt.Sprintf("replication slot %q does not exist "+
			"(`cdc run` creates it and backfills pending and failed rows)", s.Name)}
	}
	if detail, why, lost := s.invalidation(); lost {
		return SlotHealth{Class: SlotLost, Reason: fmt.Sprintf("replication slot %q was invalidated (%s): %s; "+
			"run SELECT pg_drop_replication_slot('%s'): a running cdc then re-creates the slot and backfills "+
			"pending and failed rows (so does one started later)", s.Name, detail, why, s.Name)}
	}
	switch {
	case s.SlotType != "" && s.SlotType != "logical":
		return SlotHealth{Class: SlotUnusable, Reason: fmt.Sprintf("replication slot %q is a %s slot, not a logical one "+
			"(choose another postgres.slot)", s.Name, s.SlotType)}
	case s.Plugin != "" && s.Plugin != "pgoutput":
		return SlotHealth{Class: SlotUnusable, Reason: fmt.Sprintf("replication slot %q uses plugin %q, not pgoutput "+
			"(choose another postgres.slot)", s.Name, s.Plugin)}
	case s.Database != "" && s.CurrentDatabase != "" && s.Database != s.CurrentDatabase:
		return SlotHealth{Class: SlotUnusable, Reason: fmt.Sprintf("replication slot %q belongs to database %q, not %q of postgres.url "+
			"(slot names are unique in the cluster: choose another postgres.slot)", s.Name, s.Database, s.CurrentDatabase)}
	}
	h := SlotHealth{Class: SlotUsable}
	switch s.WALStatus {
	case "unreserved":
		h.Warning = "wal_status is unreserved: the slot needs more WAL than max_slot_wal_keep_size keeps; " +
			"it is lost at the next checkpoint unless the consumer catches up"
	case "extended":
		h.Warning = "wal_status is extended: the slot retains more WAL than max_wal_size"
	}
	return h
}

// invalidation reports whether the server invalidated the slot, with the
// columns that say so (detail) and what it means (why). Each version says it
// its own way: wal_status 'lost' (13+),
// conflicting (16+: invalidated by a conflict with recovery),
// invalidation_reason (17+; idle_timeout from 18).
func (s SlotInfo) invalidation() (detail, why string, lost bool) {
	conflicting := s.Conflicting != nil && *s.Conflicting
	reason := ""
	if s.InvalidationReason != nil {
		reason = *s.InvalidationReason
	}
	// (Before 16 an invalidated slot also loses its restart_lsn, but the
	// server then reports wal_status 'lost' as well: restart_lsn adds nothing.)
	if s.WALStatus != "lost" && !conflicting && reason == "" {
		return "", "", false
	}
	detail = "wal_status " + orNull(s.WALStatus)
	if reason != "" {
		detail += ", invalidation_reason " + reason
	}
	if conflicting {
		detail += ", conflicting with recovery"
	}
	switch {
	case conflicting && reason == "": // 16: rows_removed or wal_level_insufficient
		why = "it conflicted with recovery: catalog rows it needed were removed, or wal_level on the primary " +
			"was lowered below logical"
	case reason == "rows_removed":
		why = "catalog rows it needed were removed (on a standby: turn on hot_standby_feedback and use a physical slot " +
			"for it), so its changes can no longer be decoded"
	case reason == "wal_level_insufficient":
		why = "wal_level on the primary was lowered below logical (set wal_level = logical first)"
	case reason == "idle_timeout":
		why = "it was inactive longer than idle_replication_slot_timeout (raise it or set it to 0), " +
			"and rows committed meanwhile are no longer in WAL"
	default: // wal_removed, or lost without a reason (before 17)
		why = "the server removed WAL it still needed (max_slot_wal_keep_size), " +
			"so rows committed while it was behind are no longer in WAL"
	}
	return detail, why, true
}

// Err is nil for a usable slot, else an error whose message is Reason and
// which wraps ErrSlotNotFound, ErrSlotLost or ErrSlotUnusable.
func (h SlotHealth) Err() error {
	var sentinel error
	switch h.Class {
	case SlotUsable:
		return nil
	case SlotMissing:
		sentinel = ErrSlotNotFound
	case SlotLost:
		sentinel = ErrSlotLost
	default:
		sentinel = ErrSlotUnusable
	}
	return &slotError{reason: h.Reason, sentinel: sentinel}
}

// slotError reads as the classifier's reason (the sentinel's text would only
// repeat it) and still matches the sentinel with errors.Is.
type slotError struct {
	reason   string
	sentinel error
}

func (e *slotError) Error() string { return "postgres: " + e.reason }
func (e *slotError) Unwrap() error { return e.sentinel }

func orNull(s string) string {
	if s == "" {
		return "null"
	}
	return s
}
