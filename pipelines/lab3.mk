# Lab 3: conditional image generation with classifier-free guidance (notes sections 5-6).
#   make lab3            trains the conditional U-Net on Fashion-MNIST and draws, under out/lab3/:
#                        noising.png      images along the CondOT path at t = 0, .25, .5, .75, 1
#                        unet-w{1,3,5}.png  one row per class (0 T-shirt .. 9 ankle boot, named)
#                                         and a last unguided row, guided with scale w (eq. 65)
#                        unet-training.png  samples at the last checkpoint (updated as it trains)
#   make lab3 ARCH=dit   the same with the diffusion transformer (files dit-*)
#   make lab3-sanity     the lab's 2D sanity check first: sanity/gmm-sanity.png (at the end)
#   FULL=1               the lab's sizes (32x32 padded images, U-Net 32,64,128 x 2 blocks,
#                        batch 250, 5000 steps) for a GPU: add DEVICE=cuda
#   SMALL=1              a smoke test in seconds (a few steps; the pictures are noise)
#   metrics.json         per w: classifier-FID, KID, guided accuracy and class histogram of
#                        L3_EVAL_PER_CLASS fresh samples of every class against the training
#                        images, with the real test images' figures as the floor (metrics.mk)
# The default sizes are chosen for about 15 minutes on 2 CPU cores (what they cost and give: the
# README's section on the other pipelines): the U-Net 16,32,64 with one residual layer per level
# on the 28x28 images (the U-Net takes odd sizes, 28 -> 14 -> 7), batch 64, L3_STEPS steps with
# a cosine decay and logit-normal training times, 25 Euler steps per grid; the metrics add the
# classifier (make classifier, once) and 3 x 1,000 guided samples (n = 1,000 at each w).
# Training uses label dropout 0.1 (Algorithm 5), AdamW with weight decay and a linear warm-up, an
# EMA of the weights (used for sampling), and checkpoints every L3_CKPT_EVERY steps; resume an
# interrupted run with `fit-velocity ... --resume out/lab3/unet.ckpt.safetensors`.

L3 := $(OUT)/lab3
LAB3_SEED ?= 3
L3_STEPS ?= 4000
ARCH ?= unet
L3_WS := 1 3 5
L3_CLASSES := 10

ifneq ($(FULL),)
L3_DATA := $(FASHION_TRAIN_IMAGES_PADDED)
L3_SHAPE := 1,$(FASHION_PAD),$(FASHION_PAD)
L3_UNET := --channels 32,64,128 --blocks 2
L3_DIT := --patch 2 --width 256 --depth 6 --heads 4
L3_TRAIN := --batch 250 --steps 5000 --lr 1e-3 --warmup 200 --weight-decay 1e-4 --ema 0.999
L3_CKPT_EVERY := 500
L3_K := 10
L3_EVAL_PER_CLASS := 100
L3_SAMPLE_STEPS := 100
else ifneq ($(SMALL),)
L3_DATA := $(FASHION_TRAIN_IMAGES)
L3_SHAPE := 1,28,28
L3_UNET := --channels 8,16 --blocks 1
L3_DIT := --patch 7 --width 16 --depth 1 --heads 2
L3_TRAIN := --batch 8 --steps 4 --lr 1e-3 --warmup 2 --weight-decay 1e-4 --ema 0.9
L3_CKPT_EVERY := 2
L3_K := 2
L3_EVAL_PER_CLASS := 2
L3_SAMPLE_STEPS := 3
L3_GRID := --grid-cols 2 --grid-steps 3
else
L3_DATA := $(FASHION_TRAIN_IMAGES)
L3_SHAPE := 1,28,28
L3_UNET := --channels 16,32,64 --blocks 1
L3_DIT := --patch 4 --width 64 --depth 4 --heads 4
L3_TRAIN := --batch 64 --steps $(L3_STEPS) --lr 2e-3 --warmup 100 --decay cosine --weight-decay 1e-4 \
	--ema 0.999 --time-density logit-normal
L3_CKPT_EVERY := 1000
L3_K := 8
L3_EVAL_PER_CLASS := 100
L3_SAMPLE_STEPS := 25
endif

L3_GRID ?= --grid-cols $(L3_K) --grid-steps 20
L3_NET := $(if $(filter dit,$(ARCH)),$(L3_DIT),$(L3_UNET))
L3_MODEL := $(L3)/$(ARCH).safetensors
L3_GRIDS := $(foreach w,$(L3_WS),$(L3)/$(ARCH)-w$(w).png)

.PHONY: lab3
lab3: $(L3)/noising.png $(L3_GRIDS) $(L3)/$(ARCH)-loss.png $(L3)/metrics.json
	@echo "lab3: figures and metrics.json in $(L3)/"

$(L3):
	mkdir -p $@

# Conditional flow matching with label dropout (CFG training), CondOT path, N(0, I) source.
$(L3_MODEL): $(L3_DATA) $(FASHION_TRAIN_LABELS) $(TOOLS) | $(L3)
	$(call stage_time,lab3/fit-velocity-$(ARCH)) fit-velocity --data $(L3_DATA) --labels $(FASHION_TRAIN_LABELS) --label-dropout 0.1 \
		--arch $(ARCH) $(L3_NET) $(L3_TRAIN) --seed $(LAB3_SEED) --device $(DEVICE) \
		--log $(L3)/$(ARCH)-loss.jsonl --log-every 50 \
		--checkpoint $(L3)/$(ARCH).ckpt.safetensors --checkpoint-every $(L3_CKPT_EVERY) \
		--sample-grid $(L3)/$(ARCH)-training.png $(L3_GRID) -o $@

$(L3)/$(ARCH)-loss.png: $(L3_MODEL) $(TOOLS)
	render-plot $(L3)/$(ARCH)-loss.jsonl --y loss --log-y --smooth 9 --labels "$(ARCH)" \
		--y-labels "conditional flow matching loss" --title "Lab 3: training loss ($(ARCH))" -o $@

# The first ten training images noised along the path: a row per image, t = 0 (noise) .. 1.
$(L3)/noising.png: $(L3_DATA) $(TOOLS) | $(L3)
	sample-path $(L3_DATA) -n 10 --times 0,0.25,0.5,0.75,1 --path condot --seed $(LAB3_SEED) \
		| render-grid --cols 5 --range -1,1 --upscale 2 \
		--title "t = 0, .25, .5, .75, 1" -o $@

# The same noise for every w: (classes + 1) rows of K samples.
$(L3)/x0-$(ARCH).npy: $(TOOLS) | $(L3)
	sample-noise -n $$(( ($(L3_CLASSES) + 1) * $(L3_K) )) --shape $(L3_SHAPE) \
		--seed $(LAB3_SEED) -o $@

# Guided fields: each class K times, then K null labels (the unguided row).
$(L3)/$(ARCH)-w%.json: $(L3_MODEL) $(TOOLS)
	guide --model $< --each $(L3_K) --unguided-row --scale $* -o $@

$(L3)/$(ARCH)-w%.npy: $(L3)/$(ARCH)-w%.json $(L3)/x0-$(ARCH).npy $(TOOLS)
	simulate-sde $(L3)/x0-$(ARCH).npy --field $< --steps $(L3_SAMPLE_STEPS) --seed $(LAB3_SEED) \
		--device $(DEVICE) -q -o $@

$(L3)/$(ARCH)-w%.png: $(L3)/$(ARCH)-w%.npy $(TOOLS)
	render-grid $< --cols $(L3_K) --range -1,1 --upscale 2 --row-labels "$(FASHION_CLASS_NAMES);unguided" \
		--title "$(ARCH), w = $*: a row per class, the last unguided" -o $@

# Metrics: fresh noise (another seed than the grids), each class L3_EVAL_PER_CLASS times.
$(L3)/$(ARCH)-eval-w%.json $(L3)/$(ARCH)-eval-w%.labels.npy &: $(L3_MODEL) $(TOOLS)
	guide --model $< --each $(L3_EVAL_PER_CLASS) --scale $* \
		--labels-out $(L3)/$(ARCH)-eval-w$*.labels.npy -o $(L3)/$(ARCH)-eval-w$*.json

$(L3)/$(ARCH)-eval-w%.npy: $(L3)/$(ARCH)-eval-w%.json $(TOOLS)
	sample-noise -n $$(( $(L3_CLASSES) * $(L3_EVAL_PER_CLASS) )) --shape $(L3_SHAPE) \
		--seed $$(( $(LAB3_SEED) + 100 )) \
		| simulate-sde --field $< --steps $(L3_SAMPLE_STEPS) --seed $(LAB3_SEED) \
		--device $(DEVICE) -q -o $@

$(L3)/$(ARCH)-eval-w%.metrics.json: $(L3)/$(ARCH)-eval-w%.npy $(L3)/$(ARCH)-eval-w%.labels.npy \
		$(CLASSIFIER) $(FASHION_TEST_IMAGES) $(FASHION_TEST_LABELS) $(TOOLS)
	evaluate $< --labels $(L3)/$(ARCH)-eval-w$*.labels.npy --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(FASHION_TEST_IMAGES) \
		--heldout-labels $(FASHION_TEST_LABELS) --kid-subsets $(KID_SUBSETS) -o $@

# {"arch": ..., "steps": ..., "w1": {...}, "w3": {...}, "w5": {...}}
$(L3)/metrics.json: $(foreach w,$(L3_WS),$(L3)/$(ARCH)-eval-w$(w).metrics.json)
	{ echo '{"arch": "$(ARCH)", "sampling_steps": $(L3_SAMPLE_STEPS),'; \
	  echo '"samples_per_class": $(L3_EVAL_PER_CLASS),'; \
	  sep=; for w in $(L3_WS); do \
	    echo "$$sep\"w$$w\":"; cat $(L3)/$(ARCH)-eval-w$$w.metrics.json; sep=,; \
	  done; echo '}'; } > $@.tmp && mv $@.tmp $@

# Keep the guided specs and samples that the grids are drawn from.
.SECONDARY: $(foreach w,$(L3_WS),$(L3)/$(ARCH)-w$(w).json $(L3)/$(ARCH)-w$(w).npy \
	$(L3)/$(ARCH)-eval-w$(w).json $(L3)/$(ARCH)-eval-w$(w).labels.npy $(L3)/$(ARCH)-eval-w$(w).npy)

# Lab 3's sanity check (2026): classifier-free guidance on three labelled Gaussians in 2D before
# any image, with a conditional MLP (fit-velocity picks `cmlp` for labelled points).
#   make lab3-sanity     $(L3)/sanity/gmm-sanity.png: the loss curve, the target coloured by
#                        class, L3S_EACH guided samples of each class at every w in L3S_WS
#                        (coloured by the class asked for) and the unguided samples (w = 0)
L3S := $(L3)/sanity
L3S_MIX := {"density": "mixture", "means": [[-3, 0], [3, 0], [0, 4]], "stds": [0.6, 0.6, 0.6], "weights": [0.3, 0.3, 0.4]}
L3S_WS := 1 2 4
L3S_BOUNDS := -7,7,-5,9
ifneq ($(SMALL),)
L3S_N := 300
L3S_STEPS := 20
L3S_EACH := 20
else
L3S_N := 6000
L3S_STEPS := 1500
L3S_EACH := 200
endif

.PHONY: lab3-sanity
lab3-sanity: $(L3S)/gmm-sanity.png
	@echo "lab3-sanity: $(L3S)/gmm-sanity.png"

$(L3S)/data.npy $(L3S)/labels.npy &: $(TOOLS)
	@mkdir -p $(@D)
	sample-data '$(L3S_MIX)' -n $(L3S_N) --seed $(LAB3_SEED) --labels $(L3S)/labels.npy -o $(L3S)/data.npy

$(L3S)/cmlp.safetensors $(L3S)/loss.jsonl &: $(L3S)/data.npy $(L3S)/labels.npy $(TOOLS)
	fit-velocity --data $(L3S)/data.npy --labels $(L3S)/labels.npy --label-dropout 0.2 \
		--hidden 64,64 --steps $(L3S_STEPS) --batch 256 --lr 3e-3 --decay cosine --seed $(LAB3_SEED) \
		--log $(L3S)/loss.jsonl --log-every 25 -q -o $(L3S)/cmlp.safetensors

$(L3S)/x0.npy: $(TOOLS)
	@mkdir -p $(@D)
	sample-noise -n $$(( 3 * $(L3S_EACH) )) --shape 2 --seed $(LAB3_SEED) -o $@

# Guided samples at scale w, from the same noise for every w; w = 0 is the unguided model
# (kept, not deleted as intermediate files).
.SECONDARY: $(foreach w,$(L3S_WS) 0,$(L3S)/w$(w).npy $(L3S)/w$(w).png)
$(L3S)/w%.npy: $(L3S)/cmlp.safetensors $(L3S)/x0.npy $(TOOLS)
	guide --model $< --each $(L3S_EACH) --scale $* --labels-out $(L3S)/w$*-labels.npy -o $(L3S)/w$*.json
	simulate-sde $(L3S)/x0.npy --field $(L3S)/w$*.json --solver heun --steps 50 -q -o $@

$(L3S)/target.png: $(L3S)/data.npy $(L3S)/labels.npy $(TOOLS)
	render-grid $< --labels $(L3S)/labels.npy --bounds $(L3S_BOUNDS) --size 360x360 --alpha 0.4 \
		--title "target (by class)" -o $@

$(L3S)/w%.png: $(L3S)/w%.npy $(TOOLS)
	render-grid $< $(if $(filter 0,$*),,--labels $(L3S)/w$*-labels.npy) --bounds $(L3S_BOUNDS) \
		--size 360x360 --alpha 0.5 --title "$(if $(filter 0,$*),unguided (w = 0),w = $*: each class $(L3S_EACH) times)" -o $@

$(L3S)/loss.png: $(L3S)/loss.jsonl $(TOOLS)
	render-plot $< --y loss --smooth 5 --size 360x360 --title "loss" -o $@

$(L3S)/gmm-sanity.png: $(L3S)/loss.png $(L3S)/target.png $(foreach w,$(L3S_WS) 0,$(L3S)/w$(w).png) $(TOOLS)
	render-grid $(filter-out $(TOOLS),$^) --panel-cols 3 \
		--title "Lab 3 sanity check: classifier-free guidance on three Gaussians" -o $@
