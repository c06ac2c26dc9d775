# The two commands a newcomer needs:
#   make demo   runs the demo against a throwaway PostgreSQL (or DATABASE_URL)
#   make test   runs vet and every test under the race detector
GO ?= go

.PHONY: test demo bench bench-smoke vet

vet:
	$(GO) vet ./...
	@if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./...; fi
	@if [ -f integration/go.mod ]; then cd integration && $(GO) vet ./...; fi

test: vet
	$(GO) test -race -count=1 -timeout 40m ./...
	@if [ -f bench/go.mod ]; then cd bench && $(GO) test -race -count=1 -timeout 10m ./...; fi
	@if [ -f integration/go.mod ]; then cd integration && $(GO) test -race -count=1 -timeout 10m ./...; fi
	@$(MAKE) --no-print-directory bench-smoke

# Runs every benchmark once so that none can rot; the numbers mean nothing.
bench-smoke:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -short .
	@if [ -f bench/go.mod ]; then cd bench && $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -short ./...; fi

demo:
	$(GO) run ./cmd/demo $(ARGS)

# The full comparison; writes bench/RESULTS.md.
bench:
	cd bench && $(GO) run ./cmd/report $(ARGS)
