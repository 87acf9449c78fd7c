package replication

import (
	"errors"
	"strings"
	"testing"
)

// TestSlotHealth lists every case of the one slot rule `cdc run` and
// `cdc status` share.
func TestSlotHealth(t *testing.T) {
	str := func(v string) *string { return &v }
	yes, no := func() *bool { b := true; return &b }(), func() *bool { b := false; return &b }()
	// ok is a healthy 15 slot: every test case changes one thing.
	ok := SlotInfo{Name: "s", Exists: true, SlotType: "logical", Plugin: "pgoutput", Database: "db", CurrentDatabase: "db",
		WALStatus: "reserved", RestartLSN: 0x1000, ConfirmedFlush: 0x2000}
	with := func(f func(*SlotInfo)) SlotInfo { s := ok; f(&s); return s }
	for _, tc := range []struct {
		name    string
		slot    SlotInfo
		class   SlotClass
		reason  []string // substrings of Reason
		warning string   // substring of Warning
		is      error
	}{
		{"ok", ok, SlotUsable, nil, "", nil},
		{"missing", SlotInfo{Name: "s"}, SlotMissing, []string{`replication slot "s" does not exist`, "cdc run"}, "", ErrSlotNotFound},
		{"extended is a warning", with(func(s *SlotInfo) { s.WALStatus = "extended" }), SlotUsable, nil, "extended", nil},
		{"unreserved is a warning", with(func(s *SlotInfo) { s.WALStatus = "unreserved" }), SlotUsable, nil, "unreserved", nil},
		{"before 13: no wal_status", with(func(s *SlotInfo) { s.WALStatus = "" }), SlotUsable, nil, "", nil},
		{"13-15: lost wal_status", with(func(s *SlotInfo) { s.WALStatus, s.RestartLSN = "lost", 0 }), SlotLost,
			[]string{"(wal_status lost)", "max_slot_wal_keep_size", "pg_drop_replication_slot('s')"}, "", ErrSlotLost},
		{"16: conflicting", with(func(s *SlotInfo) { s.WALStatus, s.Conflicting = "lost", yes }), SlotLost,
			[]string{"(wal_status lost, conflicting with recovery)", "wal_level", "pg_drop_replication_slot('s')"}, "", ErrSlotLost},
		{"16: conflicting while wal_status still reserved", with(func(s *SlotInfo) { s.Conflicting = yes }), SlotLost,
			[]string{"conflicting with recovery"}, "", ErrSlotLost},
		{"16: not conflicting", with(func(s *SlotInfo) { s.Conflicting = no }), SlotUsable, nil, "", nil},
		{"17: wal_removed", with(func(s *SlotInfo) { s.WALStatus, s.InvalidationReason, s.Conflicting = "lost", str("wal_removed"), no }), SlotLost,
			[]string{"(wal_status lost, invalidation_reason wal_removed)", "max_slot_wal_keep_size"}, "", ErrSlotLost},
		{"17: rows_removed", with(func(s *SlotInfo) { s.WALStatus, s.InvalidationReason, s.Conflicting = "lost", str("rows_removed"), yes }), SlotLost,
			[]string{"invalidation_reason rows_removed, conflicting with recovery", "hot_standby_feedback"}, "", ErrSlotLost},
		{"17: wal_level_insufficient", with(func(s *SlotInfo) {
			s.WALStatus, s.InvalidationReason, s.Conflicting = "lost", str("wal_level_insufficient"), yes
		}), SlotLost, []string{"invalidation_reason wal_level_insufficient", "wal_level = logical"}, "", ErrSlotLost},
		{"18: idle_timeout", with(func(s *SlotInfo) { s.WALStatus, s.InvalidationReason, s.Conflicting = "lost", str("idle_timeout"), no }), SlotLost,
			[]string{"invalidation_reason idle_timeout", "idle_replication_slot_timeout"}, "", ErrSlotLost},
		{"17: invalidation_reason alone", with(func(s *SlotInfo) { s.InvalidationReason = str("wal_removed") }), SlotLost,
			[]string{"invalidation_reason wal_removed"}, "", ErrSlotLost},
		{"17: no invalidation", with(func(s *SlotInfo) { s.InvalidationReason, s.Conflicting = nil, no }), SlotUsable, nil, "", nil},
		{"physical", with(func(s *SlotInfo) { s.SlotType, s.Plugin, s.Database = "physical", "", "" }), SlotUnusable,
			[]string{"is a physical slot", "choose another postgres.slot"}, "", ErrSlotUnusable},
		{"wrong plugin", with(func(s *SlotInfo) { s.Plugin = "test_decoding" }), SlotUnusable,
			[]string{`uses plugin "test_decoding", not pgoutput`}, "", ErrSlotUnusable},
		{"wrong database", with(func(s *SlotInfo) { s.Database = "other" }), SlotUnusable,
			[]string{`belongs to database "other", not "db"`}, "", ErrSlotUnusable},
		{"database unknown", with(func(s *SlotInfo) { s.CurrentDatabase = "" }), SlotUsable, nil, "", nil},
		{"lost wins over wrong database", with(func(s *SlotInfo) { s.WALStatus, s.Database = "lost", "other" }), SlotLost,
			[]string{"invalidated"}, "", ErrSlotLost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.slot.Health()
			if h.Class != tc.class {
				t.Fatalf("class %s (%q), want %s", h.Class, h.Reason, tc.class)
			}
			if (h.Class == SlotUsable) != (h.Reason == "") || strings.Contains(h.Reason, "\n") {
				t.Errorf("reason %q for class %s: want one line, empty only when usable", h.Reason, h.Class)
			}
			for _, sub := range tc.reason {
				if !strings.Contains(h.Reason, sub) {
					t.Errorf("reason %q lacks %q", h.Reason, sub)
				}
			}
			if (tc.warning == "") != (h.Warning == "") || !strings.Contains(h.Warning, tc.warning) {
				t.Errorf("warning %q, want one containing %q", h.Warning, tc.warning)
			}
			err, cerr := h.Err(), tc.slot.CheckUsable()
			if (err == nil) != (tc.is == nil) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("Err() = %v, want one wrapping %v", err, tc.is)
			}
			if (cerr == nil) != (err == nil) || (err != nil && cerr.Error() != err.Error()) {
				t.Errorf("CheckUsable() = %v, disagrees with Health().Err() = %v", cerr, err)
			}
		})
	}
}
