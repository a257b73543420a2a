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
# is checked too, then every test against a throwaway PostgreSQL.
test: deps
	DEMO_EXIT=1 scripts/demo.sh
	scripts/with-postgres.sh $(SWIFT) test $(TEST_FLAGS)

demo: deps
	scripts/demo.sh

# Throughput, latency, cost and scaling figures (see docs/benchmarks.md); BENCH_FLAGS=--smoke
# for a quick run.
bench: deps
	scripts/bench/run.sh $(BENCH_FLAGS)

clean:
	rm -rf .build .local
