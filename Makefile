# xapsd: push e-mail for iOS Mail on Dovecot servers.
#
#   make run     run the daemon from configs/dev/xapsd.yaml (loopback, dry-run pushes);
#                CONFIG=FILE runs another configuration, ARGS= adds options
#                (make run CONFIG=my.yaml, make run ARGS=--check-config)
#   make test    install what the tests need (as root), vet, then every test with the
#                race detector, against Dovecot 2.3 and 2.4
#   make deb     a Debian package for the Debian release this runs on;
#                DEB_ARGS=--prebuilt-daemon packages the bin/xapsd built before
#                (for a host without Go 1.26)
#   make bench   performance figures (see docs/benchmarks.md)
#   make soak    SOAK (10m) of load with kill -9, APNs faults, a full disk and clients
#                without the plugin's secret; fails on any loss or slow request

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/xapsd

.PHONY: all build run deb test test-deps test-plugin test-packaging test-short vet fmt plugin bench soak fuzz clean

# Dovecot 2.4 runs in this Debian 13 root (test/deps.sh makes it); the Go
# end-to-end tests find it through the environment.
DEBIAN13_ROOT ?= /var/cache/xapsd/debian13-root
export XAPS_DEBIAN13_ROOT := $(DEBIAN13_ROOT)

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/xapsd

# CONFIG and ARGS let you try another port or file without editing a
# tracked one.
CONFIG ?= configs/dev/xapsd.yaml
ARGS   ?=
run: build
	$(BIN) --config $(CONFIG) $(ARGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
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

# Installs missing Debian packages and prepares the Debian 13 root (as
# root, saying what it installs); lists what is missing otherwise.
test-deps:
	bash test/deps.sh

# Against the host's Dovecot 2.3 and the Debian 13 root's 2.4, each twice:
# as is, then with every imap and lmtp process under valgrind.
test-plugin:
	bash dovecot/test/smoke.sh
	VALGRIND=1 bash dovecot/test/smoke.sh
	@if [ -x $(DEBIAN13_ROOT)/usr/sbin/dovecot ]; then \
	  echo "DOVECOT_ROOT=$(DEBIAN13_ROOT) bash dovecot/test/smoke.sh"; \
	  DOVECOT_ROOT=$(DEBIAN13_ROOT) bash dovecot/test/smoke.sh && \
	  VALGRIND=1 DOVECOT_ROOT=$(DEBIAN13_ROOT) bash dovecot/test/smoke.sh; \
	else \
	  echo "*** SKIPPED: the plugin's checks against Dovecot 2.4: no root at $(DEBIAN13_ROOT) (test/deps.sh makes it)"; \
	fi

# Install scripts, systemd/Dovecot/supervisord files, the docker-mailserver
# flow and the Prometheus rules (needs root, like the Dovecot tests).
test-packaging:
	bash test/packaging/packaging_test.sh

test-short:
	$(GO) test -race -short ./...

plugin:
	$(MAKE) -C dovecot

# dist/xapsd_<version>_<arch>.deb for the Debian release this runs on
# (scripts/deb.sh; needs dovecot-dev and dpkg-dev, and Go 1.26 unless
# DEB_ARGS=--prebuilt-daemon; bash scripts/deb.sh --help lists the options).
DEB_ARGS ?=
deb:
	bash scripts/deb.sh $(DEB_ARGS)

# End to end (the daemon, an APNs stand-in and a load generator on this
# machine) with the file registry, again with the registry in a throw-away
# PostgreSQL cluster, then the Go micro-benchmarks. docs/benchmarks.md has
# figures.
bench: build
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN)
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN) -postgres
	$(GO) test -run '^$$' -bench . -benchtime 2s ./internal/registry ./internal/pluginapi ./internal/testutil/fakeapns

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
