# Lab 3: conditional image generation with classifier-free guidance (notes sections 5-6).
#   make lab3            trains the conditional U-Net on Fashion-MNIST and draws, under out/lab3/:
#                        noising.png      images along the CondOT path at t = 0, .25, .5, .75, 1
#                        unet-w{1,3,5}.png  one row per class (0 T-shirt .. 9 ankle boot) and a
#                                         last unguided row, guided with scale w (notes eq. 65)
#                        unet-training.png  samples at the last checkpoint (updated as it trains)
#   make lab3 ARCH=dit   the same with the diffusion transformer (files dit-*)
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
