# xapsd: push e-mail for iOS Mail on Dovecot servers.
#
#   make run     run the daemon from configs/dev/xapsd.yaml (loopback, dry-run pushes);
#                CONFIG=FILE runs another configuration, ARGS= adds options
#                (make run CONFIG=my.yaml, make run ARGS=--check-config)
#   make test    install what the tests need (as root), vet, then every test with the
#                race detector, against Dovecot 2.3.19, 2.3.21, 2.4.1 and 2.4.5
#   make deb     a Debian package for the Debian release this runs on and (as
#                root) one for the Dovecot in each test root (Debian 12 with
#                backports, 13, forky); DEB_ARGS=--prebuilt-daemon packages the
#                bin/xapsd built before (for a host without Go 1.26)
#   make bench   performance figures (see docs/benchmarks.md)
#   make soak    SOAK (10m) of load with kill -9, APNs faults, a full disk and clients
#                without the plugin's secret; fails on any loss or slow request

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN      := bin/xapsd

.PHONY: all build run deb test test-deps test-plugin test-packaging test-short vet fmt plugin bench soak fuzz clean

# Besides this machine's Dovecot, the tests run the plugin against the
# Dovecot in each root of test/dovecot-roots, which test/deps.sh makes under
# XAPS_ROOT_CACHE and the tests find through the environment. The Debian 13
# root also stands in for docker-mailserver 16 (test-packaging).
XAPS_ROOT_CACHE ?= /var/cache/xapsd
export XAPS_ROOT_CACHE
export XAPS_DEBIAN13_ROOT := $(XAPS_ROOT_CACHE)/debian13-root
DOVECOT_ROOTS := $(shell sed -n 's/^\([a-z0-9][a-z0-9.-]*\)[[:space:]].*/\1/p' test/dovecot-roots)
# The plugin's checks run under valgrind against this machine's Dovecot
# (2.3.19) and the Dovecot in these roots.
VALGRIND_ROOTS ?= debian14-root

all: build

# The one build recipe (scripts/build.sh): the same static binary for make
# run, make bench, make deb DEB_ARGS=--prebuilt-daemon and the images.
build:
	GO=$(GO) VERSION=$(VERSION) bash scripts/build.sh --no-plugin

# CONFIG and ARGS let you try another port or file without editing a
# tracked one.
CONFIG ?= configs/dev/xapsd.yaml
ARGS   ?=
run: build
	$(BIN) --config $(CONFIG) $(ARGS)

# go.mod and go.sum as go mod tidy leaves them: otherwise the first go
# command in a fresh clone rewrites them, and the tree is dirty before
# anyone changed anything.
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...

# The plugin's own checks against a real Dovecot, then every Go test (the
# fuzz targets' seed corpora run as ordinary tests) with the race detector,
# then a minute of the soak.
test: test-deps vet plugin test-plugin test-packaging
	@# -v so that a skipped test shows (--- SKIP and its reason); the lines
	@# of tests that ran and passed are left out.
	bash -o pipefail -c '$(GO) test -race -count=1 -timeout 20m -v ./... 2>&1 | \
	  grep -vE "^ *(=== (RUN|PAUSE|CONT|NAME)|--- PASS: |PASS$$)"'
	$(MAKE) soak SOAK=60s

# Installs missing Debian packages and prepares the roots (as root, saying
# what it installs); lists what is missing otherwise.
test-deps:
	bash test/deps.sh

# The build's API probes against edited headers, then the plugin's checks
# against this machine's Dovecot and the one in each root, and again with
# every imap and lmtp process under valgrind against this machine's and
# VALGRIND_ROOTS'.
test-plugin:
	bash dovecot/test/probe-test.sh
	bash dovecot/test/smoke.sh
	VALGRIND=1 bash dovecot/test/smoke.sh
	@for r in $(DOVECOT_ROOTS); do \
	  root=$(XAPS_ROOT_CACHE)/$$r; \
	  if [ ! -x $$root/usr/sbin/dovecot ]; then \
	    echo "*** SKIPPED: the plugin's checks in $$root: no such root (test/deps.sh makes it)"; continue; \
	  fi; \
	  echo "DOVECOT_ROOT=$$root bash dovecot/test/smoke.sh"; \
	  DOVECOT_ROOT=$$root bash dovecot/test/smoke.sh || exit 1; \
	  case " $(VALGRIND_ROOTS) " in *" $$r "*) \
	    echo "VALGRIND=1 DOVECOT_ROOT=$$root bash dovecot/test/smoke.sh"; \
	    VALGRIND=1 DOVECOT_ROOT=$$root bash dovecot/test/smoke.sh || exit 1;; \
	  esac; \
	done

# Install scripts, systemd/Dovecot/supervisord files, the docker-mailserver
# flow and the Prometheus rules (needs root, like the Dovecot tests).
test-packaging:
	bash test/packaging/packaging_test.sh

test-short:
	$(GO) test -race -short ./...

plugin:
	$(MAKE) -C dovecot

# DEB_OUT/xapsd_<version>_<arch>.deb for the Debian release this runs on
# (scripts/deb.sh; needs dovecot-dev and dpkg-dev, and Go 1.26 unless
# DEB_ARGS=--prebuilt-daemon; bash scripts/deb.sh --help lists the options),
# then, as root, one built in each root of test/dovecot-roots against its
# Dovecot (scripts/deb-in-root.sh): Debian 12 with backports, 13 and forky.
DEB_ARGS ?=
DEB_OUT  ?= dist
deb:
	bash scripts/deb.sh --out $(DEB_OUT) $(DEB_ARGS)
	@for r in $(DOVECOT_ROOTS); do \
	  root=$(XAPS_ROOT_CACHE)/$$r; \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make deb: not root, so no package built in $$root"; \
	  elif [ ! -x $$root/usr/bin/dpkg-deb ]; then \
	    echo "make deb: no root at $$root, so no package for it (test/deps.sh makes it)"; \
	  else \
	    bash scripts/deb-in-root.sh $$root $(DEB_OUT) || exit 1; \
	  fi; \
	done

# End to end (the daemon, an APNs stand-in and a load generator on this
# machine) with the file registry, again with the registry in a throw-away
# PostgreSQL cluster, then the Go micro-benchmarks (among them /notify's
# routing with and without the per-user history of xapsd diagnose).
# docs/benchmarks.md has figures.
bench: build
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN)
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN) -postgres
	$(GO) test -run '^$$' -bench . -benchtime 2s ./internal/filestore ./internal/pluginapi ./internal/notify ./internal/history ./internal/testutil/fakeapns

# The built daemon under mixed load for SOAK while it is killed with
# SIGKILL, restarted, its disk (a tmpfs; needs root) fills up and APNs's
# stand-in drops, fails and stalls; docs/reliability.md has figures.
SOAK ?= 10m
soak: build
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN) -soak $(SOAK)

FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin dist
	$(MAKE) -C dovecot clean
