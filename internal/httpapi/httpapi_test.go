package httpapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("cdc_up 1\n")) })
	notReady := func(context.Context) error { return errors.New("standby: another instance leads") }
	ready := func(context.Context) error { return nil }
	tests := []struct {
		name     string
		opts     Options
		path     string
		code     int
		contains string
	}{
		{"metrics", Options{Metrics: metrics, Ready: ready}, "/metrics", 200, "cdc_up 1"},
		{"healthz on a standby", Options{Metrics: metrics, Ready: notReady}, "/healthz", 200, "ok"},
		{"readyz streaming", Options{Metrics: metrics, Ready: ready}, "/readyz", 200, "ready"},
		{"readyz standby", Options{Metrics: metrics, Ready: notReady}, "/readyz", 503, "another instance leads"},
		{"pprof off", Options{Metrics: metrics, Ready: ready}, "/debug/pprof/", 404, ""},
		{"pprof on", Options{Metrics: metrics, Ready: ready, Pprof: true}, "/debug/pprof/", 200, "goroutine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(tt.opts).ServeHTTP(rec, httptest.NewRequest("GET", tt.path, nil))
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.contains) {
				t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, rec.Code, rec.Body.String(), tt.code, tt.contains)
			}
		})
	}
}
