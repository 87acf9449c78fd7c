// Package httpapi serves the daemon's HTTP endpoints on one listener:
// /metrics (Prometheus), /healthz (the process is alive), /readyz (the
// replication stream is connected and ClickHouse answers; a standby and a
// reconnecting instance answer 503 with the reason) and, optionally,
// /debug/pprof/.
package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"
)

// Options configure the handler.
type Options struct {
	Metrics http.Handler
	// Ready returns nil when the instance is streaming.
	Ready func(ctx context.Context) error
	Pprof bool
}

// Handler returns the mux.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", o.Metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := o.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if o.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
