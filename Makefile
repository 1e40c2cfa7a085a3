# Crystal Forge. `make run` to try it, `make test` before you push.
GO        ?= go
export GOTOOLCHAIN := local
BIN       := bin/crystal-forge
DATA      ?= $(CURDIR)/var
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all build run test vet bench deps clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/crystal-forge

# The all-in-one server with a demo flake, everything under ./var:
# web page and API on :8000, cache on :5000.
run: build deps
	mkdir -p $(DATA)
	$(BIN) server --demo --data-dir $(DATA) --key-file $(DATA)/cache-key

deps:
	./scripts/install-deps.sh

# staticcheck and errcheck are pinned tool dependencies in go.mod.
# errcheck finds unchecked errors; its exclusions, each with its reason,
# are in .errcheck-excludes.
vet:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	$(GO) tool errcheck -exclude .errcheck-excludes ./...
	@fmt=$$(gofmt -l cmd internal bench); if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt"; exit 1; fi

test: deps vet
	$(GO) test -race -count=1 -timeout 30m ./...

bench: build
	./scripts/install-deps.sh bench
	./bench/cache.sh
	./bench/storage.sh
	./bench/api.sh

clean:
	rm -rf bin
