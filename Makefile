# xapsd: push e-mail for iOS Mail on Dovecot servers.
#
#   make run     run the daemon from configs/dev/xapsd.yaml (loopback, dry-run pushes)
#   make test    vet, then every test with the race detector (needs Dovecot for the end-to-end tests)
#   make bench   performance figures (see docs/benchmarks.md)
#   make soak    SOAK (10m) of load with kill -9, APNs faults and a full disk; fails on any loss

GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/xapsd

.PHONY: all build run test test-plugin test-packaging test-short vet fmt plugin bench soak fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/xapsd

run: build
	$(BIN) --config configs/dev/xapsd.yaml

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# The plugin's own checks against a real Dovecot, then every Go test (the
# fuzz targets' seed corpora run as ordinary tests) with the race detector,
# then a minute of the soak.
test: vet plugin test-plugin test-packaging
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) soak SOAK=60s

# Twice: as is, then with every imap and lmtp process under valgrind.
test-plugin:
	bash dovecot/test/smoke.sh
	VALGRIND=1 bash dovecot/test/smoke.sh

# Install scripts, systemd/Dovecot/supervisord files, the docker-mailserver
# flow and the Prometheus rules (needs root, like the Dovecot tests).
test-packaging:
	bash test/packaging/packaging_test.sh

test-short:
	$(GO) test -race -short ./...

plugin:
	$(MAKE) -C dovecot

# End to end (the daemon, an APNs stand-in and a load generator on this
# machine), then the Go micro-benchmarks. docs/benchmarks.md has figures.
bench: build
	$(GO) run ./cmd/xapsd-bench -xapsd $(BIN)
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
	rm -rf bin
	$(MAKE) -C dovecot clean
