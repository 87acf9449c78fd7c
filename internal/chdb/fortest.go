package chdb

import (
	"context"
	"testing"
)

// ForTest returns the process's engine and a database of the test's own,
// dropped when the test ends. The test fails when the engine is older than
// ClickHouse major.minor, the oldest version its checks are about.
func ForTest(t testing.TB, major, minor int) (*Engine, string) {
	t.Helper()
	eng, err := Shared()
	if err != nil {
		t.Fatal(err)
	}
	v, err := eng.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if int(v.Version.Major) < major || (int(v.Version.Major) == major && int(v.Version.Minor) < minor) {
		t.Fatalf("embedded engine is ClickHouse %s; these checks are for %d.%d and later", eng.Version(), major, minor)
	}
	db, drop, err := eng.NewDatabase(context.Background(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("drop database %s: %v", db, err)
		}
	})
	return eng, db
}
