# syntax=docker/dockerfile:1
#
# stickyvol images.
#
#   docker build -t stickyvol.local/stickyvol:dev .                      # the node agent (default target)
#   docker build --target demo -t stickyvol.local/demo:dev .             # the example StatefulSet's image
#
# Both platforms at once, as an OCI image index in a tarball that
# `kind load image-archive` and `ctr images import` take:
#
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=$(git describe --tags --always) \
#     -t stickyvol.local/stickyvol:dev -o type=oci,dest=stickyvol.tar .
#
# Without a docker engine, `make image` builds the same agent image as an OCI
# tarball straight from cross-compiled Go binaries (e2e/framework.BuildImages):
# the agent's binary at /stickyvol as the entrypoint, for linux/amd64 and
# linux/arm64, with the same labels, and the host's file system tools with
# their libraries in the host architecture's image only; and the demo image for the host's
# architecture, /bin/stickyvol-demo next to the host's busybox.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
# Static binaries: no cgo (bind mounts go through golang.org/x/sys/unix, so the
# image needs no mount binary and no libc), no local paths in the binary.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    for cmd in stickyvol stickyvol-demo; do \
      CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
        go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/$cmd ./cmd/$cmd || exit 1; \
    done

# The example's image: busybox for the pods' shell scripts, stickyvol-demo for
# HTTP (Debian's static busybox wget crashes). It needs no privilege, so it
# runs as an unprivileged user; the pods' fsGroup makes their volumes writable.
FROM busybox:1.37 AS demo
COPY --from=build /out/stickyvol-demo /bin/stickyvol-demo
USER 65532:65532

# The node agent, on Debian slim for the file system tools of image volumes
# (volumeType: image): mke2fs, e2fsck and resize2fs (e2fsprogs) and mkfs.xfs
# (xfsprogs). Everything else the agent does goes through system calls, so
# it needs no mount, losetup or other binary. The build stage runs on the
# builder's platform and cross-compiles for each target (TARGETARCH); the
# apt-get below runs on the target's platform, so a multi-platform build
# needs emulation for that one step.
#
# It runs as root, in a privileged container: it bind-mounts volumes into pods'
# directories under the kubelet root (CAP_SYS_ADMIN, with mounts propagated back
# to the host), attaches loop devices, creates sockets that kubelet dials, and
# owns the data root. A non-root user cannot do any of that, so there is no
# USER line.
FROM debian:12-slim AS stickyvol
RUN apt-get update && \
    apt-get install -y --no-install-recommends e2fsprogs xfsprogs && \
    rm -rf /var/lib/apt/lists/*
ARG VERSION=dev
ARG REVISION=
LABEL org.opencontainers.image.title=stickyvol \
      org.opencontainers.image.description="Node-local persistent volumes for Kubernetes: one CSI driver and provisioner per node" \
      org.opencontainers.image.source=https://github.com/stickyvol/stickyvol \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION}
COPY --from=build /out/stickyvol /stickyvol
ENTRYPOINT ["/stickyvol"]
