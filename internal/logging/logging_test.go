package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewFormats(t *testing.T) {
	tests := []struct {
		format     string
		isTerminal bool
		wantJSON   bool
		wantColour bool
	}{
		{"json", false, true, false},
		{"json", true, true, false},
		{"text", false, false, false},
		{"text", true, false, true},
		{"auto", false, true, false},
		{"auto", true, false, true},
		{"", false, true, false},
		{"JSON", false, true, false},
	}
	for _, tt := range tests {
		name := tt.format
		if tt.isTerminal {
			name += "/terminal"
		}
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := New(&buf, "info", tt.format, tt.isTerminal)
			if err != nil {
				t.Fatal(err)
			}
			log.Info("flushed batch", "rows", 1000, "slot", "cdc_outbox", "err", errors.New("boom"))
			out := buf.String()
			if strings.Count(out, "\n") != 1 {
				t.Fatalf("want one line, got %q", out)
			}

			var rec map[string]any
			isJSON := json.Unmarshal(buf.Bytes(), &rec) == nil
			if isJSON != tt.wantJSON {
				t.Fatalf("JSON = %v, want %v: %q", isJSON, tt.wantJSON, out)
			}
			if isJSON {
				if rec["msg"] != "flushed batch" || rec["level"] != "INFO" || rec["rows"] != float64(1000) ||
					rec["slot"] != "cdc_outbox" || rec["err"] != "boom" || rec["time"] == nil {
					t.Fatalf("unexpected record %v", rec)
				}
				return
			}
			for _, want := range []string{"INF", "flushed batch", "rows", "1000", "slot", "cdc_outbox", "boom"} {
				if !strings.Contains(out, want) {
					t.Fatalf("text line %q lacks %q", out, want)
				}
			}
			if hasColour := strings.Contains(out, "\x1b["); hasColour != tt.wantColour {
				t.Fatalf("colour = %v, want %v: %q", hasColour, tt.wantColour, out)
			}
		})
	}
}

func TestNewLevel(t *testing.T) {
	tests := []struct {
		level string
		want  []string // messages that must appear, in order
	}{
		{"debug", []string{"d", "i", "w", "e"}},
		{"info", []string{"i", "w", "e"}},
		{"", []string{"i", "w", "e"}},
		{"WARN", []string{"w", "e"}},
		{"error", []string{"e"}},
	}
	for _, tt := range tests {
		for _, format := range []string{"json", "text"} {
			t.Run(tt.level+"/"+format, func(t *testing.T) {
				var buf bytes.Buffer
				log, err := New(&buf, tt.level, format, false)
				if err != nil {
					t.Fatal(err)
				}
				log.Debug("d")
				log.Info("i")
				log.Warn("w")
				log.Error("e")
				lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
				if len(lines) != len(tt.want) {
					t.Fatalf("got %d lines, want %d: %q", len(lines), len(tt.want), buf.String())
				}
				for i, msg := range tt.want {
					if format == "json" {
						var rec struct{ Msg string }
						if err := json.Unmarshal([]byte(lines[i]), &rec); err != nil || rec.Msg != msg {
							t.Fatalf("line %d = %q, want msg %q", i, lines[i], msg)
						}
					} else if !strings.HasSuffix(lines[i], " "+msg) {
						t.Fatalf("line %d = %q, want msg %q", i, lines[i], msg)
					}
				}
			})
		}
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", "json", false); err == nil ||
		err.Error() != `log.level must be one of debug, info, warn, error, got "loud"` {
		t.Fatalf("level error = %v", err)
	}
	if _, err := New(&bytes.Buffer{}, "info", "pretty", false); err == nil ||
		err.Error() != `log.format must be one of auto, json, text, got "pretty"` {
		t.Fatalf("format error = %v", err)
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "": slog.LevelInfo,
		" Warn ": slog.LevelWarn, "ERROR": slog.LevelError,
	} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("regular file reported as a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if IsTerminal(w) {
		t.Error("pipe reported as a terminal")
	}
	if IsTerminal(nil) {
		t.Error("nil file reported as a terminal")
	}
	closed, err := os.Create(filepath.Join(t.TempDir(), "closed"))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if IsTerminal(closed) {
		t.Error("closed file reported as a terminal")
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		defer tty.Close()
		if !IsTerminal(tty) {
			t.Error("/dev/tty not reported as a terminal")
		}
	}
}

// JSON lines carry durations as text, also inside groups.
func TestJSONDurationsAsText(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", "json", false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("retrying", "retry_in", 455*time.Millisecond, slog.Group("flush", "took", 90*time.Second), "rows", 3)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %q", err, buf.String())
	}
	group, _ := rec["flush"].(map[string]any)
	if rec["retry_in"] != "455ms" || group["took"] != "1m30s" || rec["rows"] != float64(3) {
		t.Errorf("record %v, want retry_in \"455ms\", flush.took \"1m30s\", rows 3", rec)
	}
}
