// Package modern holds the checks of `cdc migrate`'s ClickHouse side on a
// current engine: event_context as the JSON type and per-event-type views
// over JSON paths, with values written by the real sink. The tests run on
// the embedded engine (internal/chdb) and are built only with the chdb tag:
// `make test-modern`.
package modern
