# The two commands a newcomer needs:
#   make demo   runs the demo against a throwaway PostgreSQL (or DATABASE_URL)
#   make test   runs vet, the linter and every test under the race detector
GO ?= go
# The version .ci/run installs; .golangci.yml is its configuration.
GOLANGCI_LINT ?= golangci-lint

.PHONY: test demo bench bench-smoke vet lint

vet:
	$(GO) vet ./...
	@if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./...; fi
	@if [ -f integration/go.mod ]; then cd integration && $(GO) vet ./...; fi
	@if [ -f jsonstreamotel/go.mod ]; then cd jsonstreamotel && $(GO) vet ./...; fi

# The root module, then every module below it with a go.mod of its own.
lint:
	$(GOLANGCI_LINT) run ./...
	@for mod in $$(find . -mindepth 2 -name go.mod -not -path '*/testdata/*' | sort); do \
		dir=$$(dirname $$mod); \
		echo "cd $$dir && $(GOLANGCI_LINT) run ./..."; \
		(cd $$dir && $(GOLANGCI_LINT) run --config $(CURDIR)/.golangci.yml ./...) || exit 1; \
	done

test: vet lint
	$(GO) test -race -count=1 -timeout 40m ./...
	@if [ -f bench/go.mod ]; then cd bench && $(GO) test -race -count=1 -timeout 10m ./...; fi
	@if [ -f integration/go.mod ]; then cd integration && $(GO) test -race -count=1 -timeout 10m ./...; fi
	@if [ -f jsonstreamotel/go.mod ]; then cd jsonstreamotel && $(GO) test -race -count=1 -timeout 10m ./...; fi
	@$(MAKE) --no-print-directory bench-smoke

# Runs every benchmark once so that none can rot; the numbers mean nothing.
bench-smoke:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -short .
	@if [ -f bench/go.mod ]; then cd bench && $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -short ./...; fi
	@if [ -f jsonstreamotel/go.mod ]; then cd jsonstreamotel && $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...; fi

demo:
	$(GO) run ./cmd/demo $(ARGS)

# The full comparison; writes bench/RESULTS.md.
bench:
	cd bench && $(GO) run ./cmd/report $(ARGS)
