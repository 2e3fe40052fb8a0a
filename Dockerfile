# syntax=docker/dockerfile:1
#
# The baofs image: `baofs csi` (the node driver the Helm chart runs), `baofs status`, `baofs mount`.
#
#   docker build -t <registry>/baofs:0.1.0 .
#   helm install baofs deploy/charts/baofs -n kube-system --set linux.image.repository=<registry>/baofs
#
# Base images are pinned by exact tag; pass digests to pin harder, e.g.
#   --build-arg RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:<digest>
# Both stages are Debian 12 (bookworm), so the binary's glibc matches the runtime's.
#
# The runtime runs as root on purpose: the chart runs it in a privileged container (mount(2) and
# umount2(2), /dev/fuse, Bidirectional mount propagation into kubelet's pod directories,
# mlockall). It needs no fuse3 package and no fusermount: baofs opens /dev/fuse and mounts with
# mount(2) itself; the chart mounts /dev/fuse from the host.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.11-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Everything the workspace manifest names (benches and tests are declared targets).
COPY Cargo.toml Cargo.lock ./
COPY csi ./csi
COPY src ./src
COPY bench ./bench
COPY tests ./tests
# The C parts (aws-lc) build with the image's gcc; the CSI protobuf code is generated in Rust
# (protox), so no protoc.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin baofs \
    && install -D -m 0755 target/release/baofs /out/baofs

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="baofs" \
      org.opencontainers.image.description="OpenBao secrets as a live, read-only FUSE filesystem (CSI node driver)" \
      org.opencontainers.image.licenses="Apache-2.0"
# CA bundle for OpenBao over https (rustls reads the system store).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/baofs /usr/local/bin/baofs
ENTRYPOINT ["/usr/local/bin/baofs"]
CMD ["--help"]
