// Package libpath points github.com/chdb-io/chdb-go at the libchdb.so the
// tests were given, before chdb-go looks for it.
//
// chdb-go opens the library in an init function (from CHDB_LIB_PATH, else a
// few default places) and panics when that fails, before any test can say
// why. This package's init runs first and fails the test binary with a
// message that names the fix instead. It runs first because Go initializes
// packages in import-path order among those whose imports are done: this one
// imports only "os", and chdb-go's binding imports "os/exec", which sorts
// after this path and cannot be initialized before "os" is. Keep it that way:
// no other imports here.
package libpath

import "os"

// Env names the libchdb.so the embedded-engine tests load; `make
// test-modern` sets it from scripts/chdb.sh.
const Env = "CDC_TEST_CHDB_LIB"

func init() {
	lib := os.Getenv(Env)
	if lib == "" {
		fail(Env + " is not set: the embedded-engine (ClickHouse 26) tests need libchdb.so. " +
			"Run `make test-modern`, or `export " + Env + "=\"$(scripts/chdb.sh)\"` before `go test -tags chdb`.")
	}
	if st, err := os.Stat(lib); err != nil || st.IsDir() {
		fail(Env + "=" + lib + " is not a file (scripts/chdb.sh prints the path of a fetched libchdb.so)")
	}
	// chdb-go reads CHDB_LIB_PATH in its own init, which runs after this one.
	if err := os.Setenv("CHDB_LIB_PATH", lib); err != nil {
		fail("set CHDB_LIB_PATH: " + err.Error())
	}
}

func fail(msg string) {
	os.Stderr.WriteString("FAIL: chdb: " + msg + "\n")
	os.Exit(1)
}
