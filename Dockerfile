# syntax=docker/dockerfile:1
# The UMP image: one image holding the four binaries (ump = API and admin commands, ump-worker,
# ump-operator, ump-events = the event processor); the Helm chart runs each from it with its own
# command. One image because the four share almost all of their code and dependencies (librdkafka,
# OpenSSL, the message and event model): one build, one tag to pin and scan, one pull per node for
# every Deployment, and API, workers, processor and operator can never run mismatched versions of
# the message or event format. See docs/helm.md.
#
#   docker build -t ump .

# Build: the release binaries, by the same script a Debian host runs (scripts/build-release).
FROM docker.io/library/rust:1.95-bookworm AS build
# librdkafka is compiled with cmake; TLS/SASL through the system OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release /out

# Run: distroless (glibc, OpenSSL 3, CA certificates, no shell), as the non-root user 65532 that
# the chart's and the operator's pod security contexts expect.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/rootfs/ /
COPY --from=build /out/bin/ump /out/bin/ump-worker /out/bin/ump-operator /out/bin/ump-events /usr/local/bin/
# Containers listen on every interface; the sandbox provider writes under the /tmp volume (the
# root filesystem is read-only in the chart's pods).
ENV UMP_LISTEN=0.0.0.0:8080 \
    UMP_SANDBOX_OUTBOX=/tmp/ump-sandbox-outbox.jsonl
USER 65532:65532
EXPOSE 8080 9090 9091
ENTRYPOINT ["ump"]
CMD ["api"]
