# syntax=docker/dockerfile:1
# One small image for both roles: `crawler-operator controller` and `crawler-operator worker`.
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t crawler-operator:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/crawler-operator:0.1.0 --push .
#
# Stage 1 builds a fully static binary for the musl target (no libc needed at run time: TLS is
# rustls + ring, roots are compiled in) and lays out the image's files in /out/rootfs. Stage 2 is
# an empty image with those files: the binary, the CA bundle, /etc/passwd and /etc/group naming
# UID/GID 65532. No shell, no package manager.
#
# Without registry access, `make image` builds the same image from a binary built on the machine
# (hack/image.sh, hack/image/Containerfile): the final stages of the two files are the same, line
# for line, except for where rootfs/ comes from (`make check-chart` compares them).

# The build stage's base, pinned by the digest of the tag's multi-arch index, so that a rebuild
# uses the same toolchain and Debian packages. This machine cannot pull images: the digest is the
# one public Dockerfiles pin for rust:1.95-slim-bookworm (and for rust:1.95.0-slim-bookworm, the
# same image), e.g. github.com/Cyb3rb1ade/PLUR1BUS-Harness, Dockerfile at commit 38bf711, which
# says it is the index digest; about a dozen other public Dockerfiles pin the same one. To bump:
# `docker buildx imagetools inspect rust:<version>-slim-bookworm`, then change the tag and the
# digest together. The final stage is `scratch`, which is no image and has no digest.
FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
# Set by BuildKit for each --platform; the target is native on each (no cross compiler needed).
ARG TARGETARCH
# musl-gcc builds ring's C and assembly for the musl target.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY hack/image/passwd hack/image/group /out/rootfs/etc/
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_LTO=thin \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4
# Cache mounts keep the crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --target "$target" --bin crawler-operator \
 && install -D -m 0755 "target/$target/release/crawler-operator" /out/rootfs/usr/local/bin/crawler-operator \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/rootfs/etc/ssl/certs/ca-certificates.crt \
 && /out/rootfs/usr/local/bin/crawler-operator --version

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/crawler-operator/crawler-operator
LABEL org.opencontainers.image.title="crawler-operator" \
      org.opencontainers.image.description="A distributed web crawler whose control plane is Kubernetes (controller and worker)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /out/rootfs/ /
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# Metrics and health (/metrics, /healthz, /readyz) of either role.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/crawler-operator"]
CMD ["--help"]
