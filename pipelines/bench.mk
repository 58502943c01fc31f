# Benchmarks (run-bench; see lib/bench.rs). No timing is ever asserted.
#   make bench           $(BENCH_DIR)/flowpipe.jsonl, one JSON line per figure, printed too
#   make bench-compare   the same figures in PyTorch on the CPU, taking turns figure by figure
#                        with flowpipe (bench/torch_reference.py, when
#                        python3 can import torch) and the ratio flowpipe / PyTorch per figure
#                        (the median over BENCH_ROUNDS rounds, default 3, each round's ratio too)
#   BENCH_THREADS=N      threads for both (default: all cores); BENCH_FLAGS: more run-bench
#                        flags (e.g. --runs 3; --only train_step_mlp2d for make bench); SMALL=1:
#                        tiny sizes (smoke test)
#   The stages' peak memory and time: every stage of the main job (and the classifier, lab 3's
#   training) appends {"stage", "wall_s", "user_s", "sys_s", "max_rss_kib"} to
#   $(OUT)/stages.jsonl as it runs (Makefile's stage_time); `make bench` prints those lines too,
#   tagged "figure": "stage", so run `make` once first to have them.
# Record what a change bought in bench/HISTORY.md.

BENCH_DIR := $(OUT)/bench
BENCH_THREADS ?=
BENCH_FLAGS ?=
BENCH_ROUNDS ?= 3
PYTHON ?= python3
BENCH_SIZE := $(if $(SMALL),--tiny)

.PHONY: bench bench-compare
bench: $(TOOLS)
	@mkdir -p $(BENCH_DIR)
	run-bench $(BENCH_SIZE) $(if $(BENCH_THREADS),--threads $(BENCH_THREADS)) $(BENCH_FLAGS) \
	  -o $(BENCH_DIR)/flowpipe.jsonl
	@cat $(BENCH_DIR)/flowpipe.jsonl
	@if [ -f $(OUT)/stages.jsonl ]; then \
	  grep '^{' $(OUT)/stages.jsonl | sed 's/^{/{"figure": "stage", /'; \
	else \
	  echo '{"figure": "stage", "note": "no $(OUT)/stages.jsonl yet: run make (the main job) first"}'; \
	fi

# Side by side: flowpipe and PyTorch take turns figure by figure, round after round, so that a
# drift of the machine's speed (a shared VM drifts by a third within minutes) falls on both
# sides alike; compare.py pairs the rounds and reports the median ratio.
BENCH_GROUPS := matmul train_step_mlp2d train_step_unet train_step_dit train_step_vae \
                sample_cfg_unet npy_write_pipe,npy_read_pipe
bench-compare: $(TOOLS)
	@mkdir -p $(BENCH_DIR)
	@if $(PYTHON) -c 'import torch, numpy' 2>/dev/null; then \
	  : > $(BENCH_DIR)/flowpipe-pairs.jsonl; : > $(BENCH_DIR)/pytorch.jsonl; \
	  for round in $$(seq $(if $(SMALL),1,$(BENCH_ROUNDS))); do for f in $(BENCH_GROUPS); do \
	    run-bench $(BENCH_SIZE) $(if $(BENCH_THREADS),--threads $(BENCH_THREADS)) $(BENCH_FLAGS) \
	      --only $$f >> $(BENCH_DIR)/flowpipe-pairs.jsonl || exit 1; \
	    $(PYTHON) bench/torch_reference.py $(BENCH_SIZE) --only $$f \
	      --configs $(BENCH_DIR)/flowpipe-pairs.jsonl \
	      $(if $(BENCH_THREADS),--threads $(BENCH_THREADS)) >> $(BENCH_DIR)/pytorch.jsonl || exit 1; \
	  done; done; \
	  $(PYTHON) bench/compare.py $(BENCH_DIR)/flowpipe-pairs.jsonl $(BENCH_DIR)/pytorch.jsonl \
	    | tee $(BENCH_DIR)/compare.jsonl; \
	else \
	  echo "bench-compare: skipped: $(PYTHON) cannot import torch and numpy"; \
	fi
