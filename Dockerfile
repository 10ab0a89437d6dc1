# syntax=docker/dockerfile:1
#
# Images for xapsd. No build logic lives here: each RUN installs Debian
# packages or calls a script from scripts/, and test/packaging/packaging_test.sh
# runs those scripts in CI. docs/docker-mailserver.md walks through using it.
#
#   docker build -t mailserver-xapsd .            docker-mailserver with the plugin
#                                                 and xapsd (default target)
#   docker build --target xapsd -t xapsd .        the daemon alone, distroless
#
# Build arguments:
#   DMS_TAG=16          the docker-mailserver release to build on; use the tag
#                       your compose.yaml runs (the plugin is built against
#                       that image's own Dovecot: 2.4 in 16, 2.3 in 15, and
#                       the install script picks the matching Dovecot snippet)
#   VERSION=...         what `xapsd --version` prints, e.g.
#                       --build-arg VERSION=$(git describe --always --dirty)
#   GOPROXY=...         the Go module proxy the build stages fetch modules
#                       from (default: Go's own)
#   XAPSD_UID=65532, XAPSD_GID=65532   the ids of the xapsd user in the
#                       mailserver image (docs/docker-mailserver.md)
#   DMS_IMAGE, GO_IMAGE, RUNTIME_IMAGE   other base images (CI builds this file
#                       on local stand-ins for each: test/container/)

ARG DMS_IMAGE=ghcr.io/docker-mailserver/docker-mailserver
ARG DMS_TAG=16
ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# Only a source of the Go toolchain.
FROM ${GO_IMAGE} AS go

# --- Plugin and daemon, built inside the docker-mailserver image ------------
# Dovecot refuses plugins built for another Dovecot version, so the plugin is
# compiled here, against this image's dovecot-dev (with Dovecot 2.4 also its
# settings module). Nothing of this stage is shipped except what the install
# script copies.
FROM ${DMS_IMAGE}:${DMS_TAG} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends dovecot-dev gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH GOPATH=/go GOTOOLCHAIN=local
WORKDIR /src
COPY . .
ARG VERSION
ARG GOPROXY
# CGO_ENABLED=0 (build.sh's default): a static xapsd.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    scripts/build.sh

# --- The daemon alone --------------------------------------------------------
FROM ${GO_IMAGE} AS daemon-build
WORKDIR /src
COPY . .
ARG VERSION
ARG GOPROXY
# Installs /out/usr/bin/xapsd, the sample /out/etc/xapsd/xapsd.yaml and an
# empty /out/var/lib/xapsd (mode 0700).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    scripts/build.sh --no-plugin --destdir /out

# Target "xapsd": the daemon for a separate container. Mount your xapsd.yaml
# (and credential files) at /etc/xapsd; the registry lives in the volume
# /var/lib/xapsd. The configuration must set listenAddr: "" so that Dovecot in
# another container can reach port 11619, with pluginSecretFile (xapsd refuses
# to listen beyond loopback without it, unless allowUnauthenticated: true),
# and metricsListenAddr: ":11621" for probes from outside. There is no HEALTHCHECK: the image has no shell and no
# HTTP client, so let the orchestrator probe http://CONTAINER:11621/healthz
# (alive) and /readyz (credential usable, registry writable) itself.
FROM ${RUNTIME_IMAGE} AS xapsd
COPY --from=daemon-build /out/usr/bin/xapsd /usr/bin/xapsd
COPY --from=daemon-build /out/etc/xapsd/ /etc/xapsd/
# Copying /var/lib/ (not the folder itself) keeps xapsd/ as an entry that
# gets the owner and its 0700 mode.
COPY --from=daemon-build --chown=65532:65532 /out/var/lib/ /var/lib/
USER 65532:65532
EXPOSE 11619 11621
VOLUME /var/lib/xapsd
ENTRYPOINT ["/usr/bin/xapsd"]
CMD ["--config", "/etc/xapsd/xapsd.yaml"]

# --- Target "mailserver" (default): docker-mailserver with push -------------
# The build tree is mounted, not copied, so no sources end up in the image.
FROM ${DMS_IMAGE}:${DMS_TAG} AS mailserver
ARG XAPSD_UID=65532
ARG XAPSD_GID=65532
RUN --mount=type=bind,from=build,source=/src,target=/src \
    /src/scripts/docker-mailserver-install.sh
