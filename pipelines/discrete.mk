# Discrete diffusion (notes section 8): masked diffusion over English words, through the tools.
#   make discrete          out/discrete/: samples.txt (1,000 sampled words), metrics.json,
#                          words.log.jsonl (training loss), elbo.json
#   make discrete-images   binarised Fashion-MNIST as tokens: out/discrete/images-samples.png
# Data: the lowercase alphabetic words (no capitals, apostrophes or accents) of Debian's
# `wamerican` list, /usr/share/dict/american-english, one word per sequence, padded with [PAD]
# to 12 characters (longer words, 5%, are dropped); 90% train, 10% held out (seeded).
# metrics.json: the held-out ELBO in bits per token (and per word) against the uniform
# baseline log2 K, the fraction of samples that are real words not in the training split, and
# the fraction that are training words. SMALL=1 shrinks every size (used by the tests).
# Measured (`make discrete`, release tools, one thread, 2026-11-25, stratified training times):
# 4.9 min wall (233 s CPU, peak 2.3 GB) on 2 cores beside one other job. Result: held-out ELBO
# 2.46 +- 0.01 bits/token (29.6 bits/word) against the uniform log2 27 = 4.75; of 1,000
# samples 1.7% are training words and 0.4% novel real words, all distinct. The samples look
# like English (flaked, septed, malhosing) but rarely are: the small model is short of
# spelling. Also tried: 6000 steps (9.5 min, uniformly drawn training times) gave 2.33
# bits/token, 3.3% training words, 0.2% novel; width 128 with 3000 steps (about 4x the CPU)
# gave 2.37 bits/token, 1.9% and 0.3%. More steps or width alone buy little here.
# `make discrete-images` (400 steps, 80 guided samples): 6.7 min of CPU, 14.8 min wall shared;
# the rows show the ten classes' shapes.

DS := $(OUT)/discrete
DISCRETE_SEED := 8
WORDS_DICT ?= /usr/share/dict/american-english
DS_MAX_LEN := 12
# One thread: these networks are small, and candle's worker pool spins (7x the CPU time for
# the same steps on two busy cores).
DS_T := --threads 1

ifeq ($(SMALL),)
DS_WORDS := cat
DS_STEPS := 1500
DS_NET := --width 64 --depth 4 --heads 4 --batch 128 --lr 2e-3 --warmup 100 --ema 0.995
DS_SAMPLES := 1000
DS_SIM_STEPS := 100
DS_IMG_STEPS := 400
DS_IMG_NET := --width 64 --depth 3 --heads 4 --batch 16 --lr 2e-3 --warmup 50
else
DS_WORDS := sed -n '1,2000p'
DS_STEPS := 20
DS_NET := --width 32 --depth 1 --heads 2 --batch 32
DS_SAMPLES := 50
DS_SIM_STEPS := 10
DS_IMG_STEPS := 5
DS_IMG_NET := --width 16 --depth 1 --heads 2 --batch 4
endif

.PHONY: discrete discrete-images words-installed
discrete: $(DS)/samples.txt $(DS)/metrics.json
	@echo "discrete: samples.txt and metrics.json in $(DS)/"; cat $(DS)/metrics.json

$(DS)/.dir:
	@mkdir -p $(@D) && touch $@

# Succeeds when the word list is there; else installs `wamerican` (as root) or explains.
words-installed:
	@test -f $(WORDS_DICT) && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "$(WORDS_DICT) not found: apt-get install -y wamerican"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y wamerican || { apt-get update && apt-get install -y wamerican; }; } \
	  || { echo "apt-get could not install wamerican" >&2; exit 1; }; \
	else \
	  echo "$(WORDS_DICT) not found: run 'apt-get install wamerican' as root or set WORDS_DICT" >&2; exit 1; \
	fi

# ---- data: lowercase words -> tokens (90% train, 10% held out) ----
$(DS)/words.txt: | words-installed $(DS)/.dir
	grep -E '^[a-z]+$$' $(WORDS_DICT) | $(DS_WORDS) > $@.tmp && mv $@.tmp $@
$(DS)/train.npy: $(DS)/words.txt $(TOOLS)
	import-text $< --max-len $(DS_MAX_LEN) --holdout 0.1 --holdout-out $(DS)/test.npy \
	  --vocab-out $(DS)/vocab.json --seed $(DISCRETE_SEED) -o $@
$(DS)/test.npy $(DS)/vocab.json: $(DS)/train.npy
	@test -f $@
$(DS)/%.txt: $(DS)/%.npy $(DS)/vocab.json
	render-text $< --vocab $(DS)/vocab.json -o $@

# ---- masked diffusion: train, sample, held-out ELBO ----
$(DS)/words.safetensors: $(DS)/train.npy $(DS)/vocab.json
	fit-denoiser --data $< --vocab $(DS)/vocab.json --noise mask --kappa linear $(DS_NET) \
	  --steps $(DS_STEPS) --seed $(DISCRETE_SEED) --log $(DS)/words.log.jsonl $(DS_T) -q -o $@
$(DS)/samples.npy: $(DS)/words.safetensors
	simulate-ctmc --model $< -n $(DS_SAMPLES) --steps $(DS_SIM_STEPS) --seed $(DISCRETE_SEED) $(DS_T) -q -o $@
$(DS)/elbo.json: $(DS)/words.safetensors $(DS)/test.npy
	evaluate $(DS)/test.npy --model $< --draws 16 --seed $(DISCRETE_SEED) $(DS_T) -o $@

# Real words = the filtered word list; novel = real and not in the training split.
$(DS)/metrics.json: $(DS)/elbo.json $(DS)/samples.txt $(DS)/train.txt $(DS)/words.txt
	{ echo '{'; echo '"heldout":'; cat $(DS)/elbo.json; echo ','; \
	  awk 'FILENAME == ARGV[1] { train[$$0] = 1; next } \
	       FILENAME == ARGV[2] { real[$$0] = 1; next } \
	       { n++; if ($$0 in train) t++; else if ($$0 in real) v++; if (!($$0 in seen)) d++; seen[$$0] = 1 } \
	       END { printf "\"n_samples\": %d,\n\"fraction_novel_real_words\": %.4f,\n", n, v / n; \
	             printf "\"fraction_training_words\": %.4f,\n\"fraction_distinct\": %.4f,\n", t / n, d / n }' \
	    $(DS)/train.txt $(DS)/words.txt $(DS)/samples.txt; \
	  echo '"samples": "samples.txt", "training_log": "words.log.jsonl"'; \
	  echo '}'; } > $@.tmp && mv $@.tmp $@

# ---- binarised Fashion-MNIST as a discrete image task: 14x14 pixels (2x2 pooled), a
# class-conditional masked model, samples guided on the logits (w = 2), one row per class ----
discrete-images: $(DS)/images-samples.png
	@echo "discrete-images: $(DS)/images-samples.png"
$(DS)/images-tokens.npy: $(FASHION_TEST_IMAGES) $(TOOLS) | $(DS)/.dir
	import-text $< --downsample 2 --threshold 0 --vocab-out $(DS)/images-vocab.json -o $@
$(DS)/images-vocab.json: $(DS)/images-tokens.npy
	@test -f $@
$(DS)/images.safetensors: $(DS)/images-tokens.npy $(DS)/images-vocab.json $(FASHION_TEST_LABELS)
	fit-denoiser --data $< --vocab $(DS)/images-vocab.json --labels $(FASHION_TEST_LABELS) \
	  $(DS_IMG_NET) --steps $(DS_IMG_STEPS) --seed $(DISCRETE_SEED) --log $(DS)/images.log.jsonl $(DS_T) -q -o $@
$(DS)/images-samples.npy: $(DS)/images.safetensors
	simulate-ctmc --model $< --each 8 --guidance 2 --steps 50 --seed $(DISCRETE_SEED) $(DS_T) -q \
	  | render-text --vocab $< --images -o $@
$(DS)/images-samples.png: $(DS)/images-samples.npy
	render-grid $< --cols 8 -o $@
