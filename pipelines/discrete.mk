# Discrete diffusion (notes section 8): masked diffusion over English words, through the tools.
#   make discrete          out/discrete/: samples.txt (1,000 sampled words), metrics.json,
#                          words.log.jsonl and words-loss.png (training loss), elbo.json,
#                          sweep.jsonl and sweep.png (real words against steps and temperature)
#   make discrete-sweep    only the sweep (DS_SWEEP_TEMPS x DS_SWEEP_STEPS, DS_SAMPLES each)
#   make discrete-images   binarised Fashion-MNIST as tokens: out/discrete/images-samples.png
# Data: the lowercase alphabetic words (no capitals, apostrophes or accents) of Debian's
# `wamerican` list, /usr/share/dict/american-english, one word per sequence, padded with [PAD]
# to 12 characters (longer words, 5%, are dropped); 90% train, 10% held out (seeded).
# metrics.json: the held-out ELBO in bits per token (and per word) against the uniform
# baseline log2 K; the sampling steps and temperature; the fraction of samples that are real
# words, split into training words and novel ones (real, not in the training split), and the
# fraction of distinct samples. SMALL=1 shrinks every size (used by the tests).
# The recipe spends the budget on training (8000 steps, about 19 passes over the words) and
# samples at temperature 0.25 with 25 CTMC steps: sharper letters make far more real words, and
# fewer steps (several letters revealed at once) did not hurt. The README's table has what it
# measured and what each change bought; sweep.png shows the trade-off for the trained model.
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
DS_STEPS := 8000
DS_NET := --width 64 --depth 4 --heads 4 --batch 128 --lr 2e-3 --warmup 100 --ema 0.995
DS_SAMPLES := 1000
DS_SIM_STEPS := 25
DS_TEMPERATURE := 0.25
DS_SWEEP_TEMPS := 0.25 0.3 0.4 0.6 1
DS_SWEEP_STEPS := 10 25 50 100
DS_IMG_STEPS := 400
DS_IMG_NET := --width 64 --depth 3 --heads 4 --batch 16 --lr 2e-3 --warmup 50
else
DS_WORDS := sed -n '1,2000p'
DS_STEPS := 20
DS_NET := --width 32 --depth 1 --heads 2 --batch 32
DS_SAMPLES := 50
DS_SIM_STEPS := 10
DS_TEMPERATURE := 0.5
DS_SWEEP_TEMPS := 0.5 1
DS_SWEEP_STEPS := 2 5
DS_IMG_STEPS := 5
DS_IMG_NET := --width 16 --depth 1 --heads 2 --batch 4
endif

.PHONY: discrete discrete-images discrete-sweep words-installed
discrete: $(DS)/samples.txt $(DS)/metrics.json $(DS)/words-loss.png $(DS)/sweep.png
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
	  --steps $(DS_STEPS) --seed $(DISCRETE_SEED) --log $(DS)/words.log.jsonl --log-every 250 $(DS_T) -q -o $@
$(DS)/words-loss.png: $(DS)/words.safetensors
	render-plot $(DS)/words.log.jsonl --y loss --smooth 5 --labels words \
	  --y-labels "masked diffusion loss (nats per token)" --title "Discrete diffusion: training loss" -o $@
$(DS)/samples.npy: $(DS)/words.safetensors
	simulate-ctmc --model $< -n $(DS_SAMPLES) --steps $(DS_SIM_STEPS) \
	  --temperature $(DS_TEMPERATURE) --seed $(DISCRETE_SEED) $(DS_T) -q -o $@
$(DS)/elbo.json: $(DS)/words.safetensors $(DS)/test.npy
	evaluate $(DS)/test.npy --model $< --draws 16 --seed $(DISCRETE_SEED) $(DS_T) -o $@

# Word statistics of a samples file: awk $(DS_WORD_STATS) TRAIN.txt WORDS.txt SAMPLES.txt prints
# "n_samples", "fraction_novel_real_words", "fraction_real_words", "fraction_training_words" and
# "fraction_distinct" as JSON members (no braces). Real = in the filtered word list; novel = real
# and not in the training split.
DS_WORD_STATS := 'FILENAME == ARGV[1] { train[$$0] = 1; next } \
  FILENAME == ARGV[2] { real[$$0] = 1; next } \
  { n++; if ($$0 in train) t++; else if ($$0 in real) v++; if (!($$0 in seen)) d++; seen[$$0] = 1 } \
  END { printf "\"n_samples\": %d, \"fraction_real_words\": %.4f, ", n, (t + v) / n; \
        printf "\"fraction_novel_real_words\": %.4f, \"fraction_training_words\": %.4f, ", v / n, t / n; \
        printf "\"fraction_distinct\": %.4f", d / n }'

$(DS)/metrics.json: $(DS)/elbo.json $(DS)/samples.txt $(DS)/train.txt $(DS)/words.txt
	{ echo '{'; echo '"heldout":'; cat $(DS)/elbo.json; echo ','; \
	  echo '"sampling": {"steps": $(DS_SIM_STEPS), "temperature": $(DS_TEMPERATURE)},'; \
	  awk $(DS_WORD_STATS) $(DS)/train.txt $(DS)/words.txt $(DS)/samples.txt; echo ','; \
	  echo '"samples": "samples.txt", "training_log": "words.log.jsonl"'; \
	  echo '}'; } > $@.tmp && mv $@.tmp $@

# ---- the fraction of real words against sampling steps and temperature ----
# sweep.jsonl: one line per (temperature, steps) of DS_SAMPLES samples; sweep.png draws the real
# and the novel real words against the steps, one line per temperature.
discrete-sweep: $(DS)/sweep.png
	@echo "discrete-sweep: $(DS)/sweep.png and sweep.jsonl"
$(DS)/sweep.jsonl: $(DS)/words.safetensors $(DS)/train.txt $(DS)/words.txt $(TOOLS)
	rm -f $@.tmp; for temp in $(DS_SWEEP_TEMPS); do for steps in $(DS_SWEEP_STEPS); do \
	  simulate-ctmc --model $< -n $(DS_SAMPLES) --steps $$steps --temperature $$temp \
	    --seed $(DISCRETE_SEED) $(DS_T) -q \
	  | render-text --vocab $< -o $(DS)/sweep-samples.txt || exit 1; \
	  { printf '{"temperature": %s, "steps": %s, ' $$temp $$steps; \
	    awk $(DS_WORD_STATS) $(DS)/train.txt $(DS)/words.txt $(DS)/sweep-samples.txt; echo '}'; } >> $@.tmp \
	  || exit 1; \
	done; done; rm -f $(DS)/sweep-samples.txt; mv $@.tmp $@
$(DS)/sweep.png: $(DS)/sweep.jsonl $(TOOLS)
	render-plot $< --x steps --series temperature \
	  --y "fraction_real_words,fraction_novel_real_words" \
	  --y-labels "real words (fraction of samples);novel real words (not in training)" \
	  --x-label "CTMC sampling steps" --title "Masked diffusion over words: samples that are words" -o $@

# ---- binarised Fashion-MNIST as a discrete image task: 14x14 pixels (2x2 pooled), a
# class-conditional masked model, samples guided on the logits (w = 2), one row per class ----
discrete-images: $(DS)/images-samples.png $(DS)/images-loss.png
	@echo "discrete-images: $(DS)/images-samples.png, images-loss.png"
$(DS)/images-tokens.npy: $(FASHION_TEST_IMAGES) $(TOOLS) | $(DS)/.dir
	import-text $< --downsample 2 --threshold 0 --vocab-out $(DS)/images-vocab.json -o $@
$(DS)/images-vocab.json: $(DS)/images-tokens.npy
	@test -f $@
$(DS)/images.safetensors: $(DS)/images-tokens.npy $(DS)/images-vocab.json $(FASHION_TEST_LABELS)
	fit-denoiser --data $< --vocab $(DS)/images-vocab.json --labels $(FASHION_TEST_LABELS) \
	  $(DS_IMG_NET) --steps $(DS_IMG_STEPS) --seed $(DISCRETE_SEED) --log $(DS)/images.log.jsonl $(DS_T) -q -o $@
$(DS)/images-loss.png: $(DS)/images.safetensors
	render-plot $(DS)/images.log.jsonl --y loss --smooth 5 --labels images \
	  --title "Discrete diffusion on binarised Fashion-MNIST: training loss against the step" -o $@
$(DS)/images-samples.npy: $(DS)/images.safetensors
	simulate-ctmc --model $< --each 8 --guidance 2 --steps 50 --seed $(DISCRETE_SEED) $(DS_T) -q \
	  | render-text --vocab $< --images -o $@
$(DS)/images-samples.png: $(DS)/images-samples.npy
	render-grid $< --cols 8 -o $@
