package status

// Test hooks: the version-dependent queries, exported for the tests only.

// SlotQuery returns the slot query for a server_version_num.
func SlotQuery(versionNum int) string {
	q, _ := slotQuery(versionNum, nil)
	return q
}

// StatsQuery returns the pg_stat_replication_slots query for a
// server_version_num, or "" before 14.
func StatsQuery(versionNum int) string { return statsQuery(versionNum) }
