// Package logging builds the daemon's log/slog logger from the log.level and
// log.format settings: coloured human-readable lines (github.com/lmittmann/tint)
// for people at a terminal, JSON lines for log collectors.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
)

// New returns a logger writing to w at the given level ("debug", "info",
// "warn" or "error"; "" means info) in the given format:
//
//   - "text": tint's human-readable lines, coloured only when isTerminal;
//   - "json": slog's JSON handler, one object per line;
//   - "auto" or "": text when isTerminal, JSON otherwise.
//
// isTerminal says whether w is a terminal (see [IsTerminal]). Level and format
// are case-insensitive. An unknown level or format is an error naming the
// config key (log.level / log.format).
func New(w io.Writer, level, format string, isTerminal bool) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	var text bool
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "text":
		text = true
	case "json":
	case "auto", "":
		text = isTerminal
	default:
		return nil, fmt.Errorf("log.format must be one of auto, json, text, got %q", format)
	}
	var h slog.Handler
	if text {
		h = tint.NewTextHandler(w, &tint.Options{
			Level:      lvl,
			TimeFormat: "2006-01-02 15:04:05.000",
			NoColor:    !isTerminal,
		})
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl, ReplaceAttr: durationsAsText})
	}
	return slog.New(h), nil
}

// durationsAsText writes durations as Go duration text ("455ms", "1m30s")
// instead of slog's JSON default, integer nanoseconds, which no reader of a
// log line can take in at a glance ("retry_in":455000000). tint already
// prints them so.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// ParseLevel maps "debug", "info", "warn" and "error" (case-insensitive; ""
// is info) to a slog.Level.
func ParseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log.level must be one of debug, info, warn, error, got %q", level)
}

// IsTerminal reports whether f is a character device, which is how a
// terminal looks to Stat (stdlib only, no ioctl). /dev/null is a character
// device too; logging coloured text into it is harmless. A nil f is not a
// terminal.
func IsTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
