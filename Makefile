# ccmesh — build, test, benchmark.
GO ?= go
PKGS := ./...

.PHONY: all build test deps vet fmt-check fuzz bench bench-fault bench-sip serve clean

all: build

build:
	$(GO) build -o ccmesh ./cmd/ccmesh

deps:
	@bash scripts/test-deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# The one test command (CI runs it through .ci/run): dependencies, vet, gofmt, and
# every test under the race detector, the black-box tests of the binary included.
test: deps vet fmt-check
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

# Longer fuzzing of the parsers (seed corpora already run in `make test`).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/config/
	$(GO) test -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime $(FUZZTIME) ./internal/agent/
	$(GO) test -run '^$$' -fuzz '^FuzzRequestBodies$$' -fuzztime $(FUZZTIME) ./internal/api/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/sip/digest/
	$(GO) test -run '^$$' -fuzz '^FuzzBadRequest$$' -fuzztime $(FUZZTIME) ./internal/sip/

# Micro-benchmarks behind docs/BENCHMARKS.md, six runs each, summarised with
# benchstat (bench/micro.sh; about four minutes).
bench:
	GO=$(GO) bash bench/micro.sh
	$(GO) test -run 'TestMemoryPerIdleAgent' -v ./internal/router/

# The survivability fault runs (issue 5) with their measured figures: kill -9
# and a silent partition of one member of three under a sipp load, and a
# queue's hand-over to a peer that is then killed (root: network namespaces).
bench-fault:
	@bash scripts/test-deps.sh
	$(GO) test -count=1 -v -run 'TestKillOneMemberUnderLoad|TestSilentPartitionAndHeal|TestQueueHandoverAndMediaFromPeer' ./test/e2e/ | grep -E '^(--- |ok|FAIL)|(fault|resources)_test.go'

# SIP calls side by side with the reference (Kamailio), installing sipp and
# Kamailio when missing; ARGS passes flags, e.g. ARGS='-media anchored -targets ccmesh'.
bench-sip:
	@EXTRA_NEEDS="kamailio:kamailio" bash scripts/test-deps.sh
	$(GO) run ./bench/sipbench $(ARGS)

serve:
	$(GO) run ./cmd/ccmesh serve

clean:
	rm -f ccmesh
