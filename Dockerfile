# syntax=docker/dockerfile:1
#
# outbox-cdc image: a static `cdc` binary on distroless (no shell, no package
# manager), running as the unprivileged user `nonroot` (uid/gid 65532).
#
#   docker build -t outbox-cdc:local \
#       --build-arg VERSION="$(git describe --always --dirty)" \
#       --build-arg COMMIT="$(git rev-parse --short HEAD)" .
#   docker run --rm outbox-cdc:local version
#   docker run --rm -e CDC_POSTGRES_URL=... -e CDC_HTTP_LISTEN=0.0.0.0:9187 \
#       -p 9187:9187 outbox-cdc:local run
#
# The entrypoint is `cdc`; the default command is `run`. Configure it with
# CDC_<SECTION>_<KEY> variables or mount a file and pass `--config FILE`
# (docs/configuration.md). http.listen defaults to 127.0.0.1:9187: inside a
# container set it to 0.0.0.0:9187 (or :9187) so /metrics, /healthz and
# /readyz can be reached from outside.

ARG GO_VERSION=1.26

# ---- build -----------------------------------------------------------------
# Runs on the build machine's platform and cross-compiles for the target one
# (docker buildx build --platform linux/amd64,linux/arm64 ...).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src

# Dependencies first, so editing the sources does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .

ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS
ARG TARGETARCH
# CGO_ENABLED=0: a static binary that needs no libc in the runtime image.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false \
        -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
        -o /out/cdc ./cmd/cdc

# ---- runtime ---------------------------------------------------------------
# distroless/static: CA certificates (for sslmode=verify-full), tzdata and an
# /etc/passwd with the `nonroot` user; nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cdc /usr/local/bin/cdc
USER nonroot:nonroot
# /metrics, /healthz, /readyz (http.listen)
EXPOSE 9187
# `docker stop` sends SIGTERM: cdc flushes, marks and confirms what it has
# read within shutdown.grace (30s). Give it longer than that to stop
# (docker stop -t 45, compose stop_grace_period, k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cdc"]
CMD ["run"]
