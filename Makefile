# outbox-cdc — build and test entry points.
#
#   make build     bin/cdc with version/commit stamped in
#   make testenv   start the private PostgreSQL + ClickHouse test servers (scripts/testenv.sh up)
#   make test      testenv, then every test (unit + integration) with -race
#   make vet       go vet ./...
#   make testenv-down   stop the test servers (data kept)

SHELL := /bin/bash
GO ?= go

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

GOTESTFLAGS ?= -race -count=1 -timeout 25m

.PHONY: all build test testenv testenv-down vet demo

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/cdc ./cmd/cdc

testenv:
	scripts/testenv.sh up

testenv-down:
	scripts/testenv.sh down

test: testenv
	eval "$$(scripts/testenv.sh env)" && $(GO) test $(GOTESTFLAGS) ./...

vet:
	$(GO) vet ./...

# End-to-end demo on the private test servers (see scripts/demo.sh): fresh
# `demo` databases, backfill of pre-existing rows, ~10 s of produced load,
# SIGTERM, and a check that ClickHouse holds every committed row exactly once.
demo: build
	scripts/demo.sh
