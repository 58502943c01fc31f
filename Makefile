# flowpipe: every lab and the main job as make targets over the tools in src/bin/.
# `make` runs the main job; `make test` runs the tests; `make bench` prints benchmark JSON.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules
.DEFAULT_GOAL := all

CARGO ?= cargo
# Where the tools are; the pipeline smoke test points this at the test build.
BIN ?= target/release
OUT ?= out
# SMALL=1 shrinks every lab to seconds (used by the tests); FULL=1 uses the lab's sizes (GPU).
SMALL ?=
FULL ?=
DEVICE ?= cpu
export PATH := $(abspath $(BIN)):$(PATH)

# $(call stage_time,NAME) before a command appends its cost to $(OUT)/stages.jsonl as one JSON
# line: {"stage", "wall_s", "user_s", "sys_s", "max_rss_kib"} (peak memory of that process).
# It needs GNU time (/usr/bin/time); without it, commands simply run. `make bench` prints the
# lines of the last runs.
TIME_BIN := $(wildcard /usr/bin/time)
comma := ,
STAGE_FORMAT := '{"stage": "@", "wall_s": %e$(comma) "user_s": %U$(comma) "sys_s": %S$(comma) "max_rss_kib": %M}'
stage_time = $(if $(TIME_BIN),$(TIME_BIN) -a -o $(OUT)/stages.jsonl -f $(subst @,$(1),$(STAGE_FORMAT)))

.PHONY: all build test bench clean
all: latent
	@echo "outputs are under $(OUT)/"

# Tools are built once; every pipeline stage depends on this stamp.
TOOLS := $(BIN)/.built
# Every source file at any depth (lib/nn/ops/..., lib/render/plot/...) and the build flags.
TOOL_SOURCES := $(shell find lib src -name '*.rs') $(wildcard .cargo/config.toml)
$(TOOLS): Cargo.toml Cargo.lock $(TOOL_SOURCES)
ifeq ($(BIN),target/release)
	$(CARGO) build --release --locked --bins
	@touch $@
else
	@test -x $(BIN)/sample-noise || { echo "no tools in BIN=$(BIN)"; exit 1; }
	@touch $@
endif

build: $(TOOLS)

# The library's unit tests and the tools' tests (tests/cli, which builds every tool). The tools'
# own files hold no tests (they are thin: clap, files, a call into lib), so their 29 empty test
# harnesses are not built; nor are doc tests (the docs' examples are `text` blocks).
test:
	$(CARGO) test --locked --no-fail-fast --lib --test cli

clean:
	rm -rf $(OUT)

# The shared stages first (datasets, the metrics classifier): the labs name their files in
# prerequisite lists, which make expands as it reads them.
SHARED_MK := pipelines/data.mk pipelines/metrics.mk
include $(SHARED_MK)
include $(filter-out $(SHARED_MK),$(sort $(wildcard pipelines/*.mk)))
