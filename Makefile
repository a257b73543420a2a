# consent-sync: the two commands of the quick start, and a few more.
#   make demo   run the daemon end to end on a throwaway PostgreSQL with two sample receivers
#   make test   run every test against a throwaway PostgreSQL

SWIFT ?= swift
TEST_FLAGS ?=

.PHONY: all build release test demo deps clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

test: deps
	scripts/with-postgres.sh $(SWIFT) test $(TEST_FLAGS)

demo: deps
	scripts/demo.sh

clean:
	rm -rf .build .local
