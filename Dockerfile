# syntax=docker/dockerfile:1
#
# kube-node-status container image.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION="$(cargo pkgid | cut -d# -f2)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/OWNER/kube-node-status:VERSION --push .
#
# Each platform builds natively (under QEMU emulation for the foreign one), so
# no cross toolchain is involved. The multi-arch build is documented, not
# tested: CI builds and checks linux/amd64 only (scripts/build-image).
#
# The runtime is distroless: no shell, no package manager, a numeric non-root
# user. Both base images come from build arguments, so a release can pin them
# by digest (docs/install.md), for example
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>

# At least the crate's rust-version (Cargo.toml); tests/it/image.rs checks it.
ARG RUST_VERSION=1.95.0
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src

# The allocator, jemalloc, is built from source by tikv-jemalloc-sys, which
# runs make; the slim image has only gcc. (The pin is bookworm's: another
# BUILDER_IMAGE release needs its own.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*

# jemalloc takes the page size it is built for as the smallest it can run on.
# arm64 kernels come with 4 KiB or 64 KiB pages, so arm64 builds for 64 KiB
# (the bundled configure does so too; this keeps it so whatever the crate's
# version). The two builds below must see the same value, or jemalloc is
# built again.
ARG TARGETARCH

# Dependencies first, in their own layer: rebuilt only when the manifests change.
# Cargo reads every target the manifest declares, so the bench's source comes
# along (it needs the fake-apiserver feature and is never built here).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
    && cargo build --release --locked --no-default-features \
    && rm -rf src

# Then the crate itself. The fake API server (a test and demo tool) is left out.
COPY src ./src
# jemalloc's licence (BSD-2-Clause) goes with the binary it is linked into.
RUN touch src/main.rs src/lib.rs \
    && if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
    && cargo build --release --locked --no-default-features \
    && cp target/release/kube-node-status /kube-node-status \
    && /kube-node-status --version \
    && jemalloc="$(sed -n '/^name = "tikv-jemalloc-sys"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)" \
    && copying="$(find "${CARGO_HOME}/registry/src" -path "*/tikv-jemalloc-sys-${jemalloc}/jemalloc/COPYING" -print -quit)" \
    && install -D -m 0644 "$copying" /licenses/jemalloc/COPYING

FROM ${RUNTIME_IMAGE}

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kube-node-status" \
      org.opencontainers.image.description="Kubernetes node readiness as OpenTelemetry metrics, over OTLP and Prometheus /metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder /kube-node-status /usr/local/bin/kube-node-status
COPY --from=builder /licenses/ /usr/share/doc/kube-node-status/
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/kube-node-status"]
