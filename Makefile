# consent-sync: the two commands of the quick start, and a few more.
#   make demo   run the daemon end to end on a throwaway PostgreSQL with two sample receivers
#   make test   run every test against a throwaway PostgreSQL

SWIFT ?= swift
TEST_FLAGS ?=

.PHONY: all build release test demo bench deps clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# The quick-start demo end to end (non-interactive), so that the README's first command
# is checked too, then every test against a throwaway PostgreSQL, then a short bounded run of
# every fuzz target and the AddressSanitizer run of a subset of the tests (docs/testing.md).
# SANITIZE=0 skips the last step.
SANITIZE ?= 1
# The benchmark's self-checked smoke run (docs/benchmarks.md) on the debug build; 0 skips it.
BENCH_SMOKE ?= 1

test: deps
	DEMO_EXIT=1 scripts/demo.sh
	scripts/with-postgres.sh $(SWIFT) test $(TEST_FLAGS)
	if [ "$(SANITIZE)" != 0 ]; then SWIFT=$(SWIFT) scripts/with-postgres.sh scripts/sanitize-and-fuzz.sh; fi
	if [ "$(BENCH_SMOKE)" != 0 ]; then BENCH_BINARY=$(CURDIR)/.build/debug/consent-sync scripts/bench/run.sh --smoke; fi

demo: deps
	scripts/demo.sh

# Throughput, latency, cost and scaling figures (see docs/benchmarks.md); BENCH_FLAGS=--smoke
# for a quick run.
bench: deps
	scripts/bench/run.sh $(BENCH_FLAGS)

clean:
	rm -rf .build .build-asan .build-fuzz .build-fuzz-deps .local
