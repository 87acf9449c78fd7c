package main

import (
	"os"
	"runtime"
	"testing"
)

// runtime.max_procs sets GOMAXPROCS unless the GOMAXPROCS variable chose it.
func TestSetMaxProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	tests := []struct {
		name string
		env  string // GOMAXPROCS; "" means unset
		cfg  int
		want int
	}{
		{name: "config applies", cfg: 1, want: 1},
		{name: "config of two", cfg: 2, want: 2},
		{name: "GOMAXPROCS variable wins", env: "3", cfg: 1, want: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("GOMAXPROCS", tt.env)
				runtime.GOMAXPROCS(tt.want) // what the runtime read from it at start
			} else if old, ok := os.LookupEnv("GOMAXPROCS"); ok {
				os.Unsetenv("GOMAXPROCS")
				t.Cleanup(func() { os.Setenv("GOMAXPROCS", old) })
			}
			if got := setMaxProcs(tt.cfg); got != tt.want || runtime.GOMAXPROCS(0) != tt.want {
				t.Errorf("setMaxProcs(%d) = %d, GOMAXPROCS %d; want %d", tt.cfg, got, runtime.GOMAXPROCS(0), tt.want)
			}
		})
	}
}
