# syntax=docker/dockerfile:1
#
# stickyvol images.
#
#   docker build -t stickyvol.local/stickyvol:dev .                      # the node agent (default target)
#   docker build --target demo -t stickyvol.local/demo:dev .             # the example StatefulSet's image
#
# Without a docker engine, `make image` builds the same images as OCI tarballs
# straight from the Go binaries (e2e/cmd/mkimage): the agent's binary at
# /stickyvol as the entrypoint; the demo's at /bin/stickyvol-demo next to busybox.

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

# The node agent. distroless/static holds no shell and no package manager, only
# what a static binary may want: CA certificates (for a --kubeconfig that
# points at a server with a public certificate), /etc/passwd, time zones, /tmp.
# scratch would run the agent too, with none of those.
#
# It runs as root, in a privileged container: it bind-mounts volumes into pods'
# directories under the kubelet root (CAP_SYS_ADMIN, with mounts propagated back
# to the host), creates sockets that kubelet dials, and owns the data root. A
# non-root user cannot do any of that, so there is no USER line.
FROM gcr.io/distroless/static-debian12 AS stickyvol
COPY --from=build /out/stickyvol /stickyvol
ENTRYPOINT ["/stickyvol"]
