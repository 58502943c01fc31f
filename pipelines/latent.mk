# Latent diffusion end to end (notes section 6, Algorithm 6), the main job, through the tools only:
#   Fashion-MNIST padded to 32x32 -> fit-vae -> encode-vae (train set, posterior means, scaled to
#   unit variance) -> fit-velocity (a class-conditional DiT with patch 1 on the 4x8x8 latents,
#   label dropout for classifier-free guidance) -> guide (w = LAT_GUIDANCE, every class) ->
#   sample-noise | simulate-sde -> decode-vae -> render-grid.
#
#   make latent           everything below
#   make latent-vae       the VAE stages only (fit, reconstruction grid, loss curve, latents,
#                         interpolation figure, VAE metrics): runs on its own
#   make latent-guidance  the guidance trade-off (FID and accuracy against w): guidance.png/.json
#   out/latent/grid.png           generated images, a row per class
#   out/latent/recon.png          8 training images over their VAE reconstructions
#   out/latent/interpolation.png  decoded straight lines between pairs of test latents
#   out/latent/vae-loss.png, flow-loss.png   the loss curves, drawn
#   out/latent/vae-loss.jsonl, out/latent/flow-loss.jsonl   loss curves (--log)
#   out/latent/vae-metrics.json   VAE reconstruction MSE, mean-image MSE, KL, latent std (test set)
#   out/latent/metrics.json       all at n = LAT_EVAL_N (100 per class by default): how it was
#                                 sampled (guidance, solver, steps, NFE); "reconstruction": the
#                                 VAE's reconstructions of the first LAT_EVAL_N test images;
#                                 "samples": LAT_EVAL_PER_CLASS fresh guided samples of every
#                                 class (centre-cropped to 28x28); each with classifier-FID, KID,
#                                 guided accuracy, class histogram against the training images,
#                                 "floor" (the same held-out test images as real samples) and
#                                 "fid_over_floor"; "vae": the VAE metrics; "likelihood":
#                                 the latent flow's NLL and bits per dimension on 100
#                                 held-out latents (likelihood's report).
# QUALITY=long: longer training for better images, about 40 minutes of stages on 2 cores
# (README's table says what it costs and gives);
# make does not see a changed setting: use it with another OUT (OUT=out-long) or after make clean.
# SMALL=1: tiny sizes (seconds; used by the smoke test); FULL=1: the lab's sizes (GPU).
# What each setting costs and gives is measured in the README's table (with machine, date and
# commit); every run appends each stage's wall time, CPU time and peak memory to
# $(OUT)/stages.jsonl (`make bench` prints them).

LAT := $(OUT)/latent
LAT_SEED := 7
LAT_CLASSES := 10
LAT_PAD := 32
LAT_LATENT := 4,8,8
QUALITY ?= default
# The first LAT_TRAIN_N training images (and their labels), padded to 32x32 (the lab's way;
# 28x28 would work too, giving 4x7x7 latents). The first LAT_EVAL_N test images are the
# held-out set: padded (LAT_TEST) for the VAE's metrics, reconstructions and figures, and at
# 28x28 with their labels (LAT_HELDOUT*) as the floor of every FID.
LAT_TRAIN := $(LAT)/train-images.npy
LAT_LABELS := $(LAT)/train-labels.npy
LAT_TEST := $(LAT)/test-images.npy
LAT_HELDOUT := $(LAT)/heldout-images.npy
LAT_HELDOUT_LABELS := $(LAT)/heldout-labels.npy

ifneq ($(SMALL),)
LAT_TRAIN_N := 512
LAT_VAE_FLAGS := --channels 8,16,16 --latent-channels 4 --blocks 1 --scale-samples 256
LAT_VAE_STEPS := 10
LAT_VAE_BATCH := 16
LAT_FLOW_FLAGS := --width 32 --depth 1 --heads 2
LAT_FLOW_STEPS := 20
LAT_FLOW_BATCH := 32
LAT_PER_CLASS := 2
LAT_SIM_STEPS := 5
LAT_PAIRS := 0:1
LAT_EVAL_PER_CLASS := 2
LAT_GUIDANCE := 3
LAT_SOLVER := heun
else ifneq ($(FULL),)
# The lab's sizes: a wider VAE with attention, the lab's 128 x 4 x 4 latents would be
# --channels 64,128,128,128 --latent-channels 128; we keep 4 x 8 x 8 for the patch-1 DiT.
LAT_TRAIN_N := 60000
LAT_VAE_FLAGS := --channels 64,128,128 --latent-channels 4 --blocks 2 --attention --ema 0.999 --beta 0.1
LAT_VAE_STEPS := 20000
LAT_VAE_BATCH := 128
LAT_FLOW_FLAGS := --width 256 --depth 8 --heads 8 --ema 0.9999 --time-density logit-normal
LAT_FLOW_STEPS := 50000
LAT_FLOW_BATCH := 256
LAT_PER_CLASS := 10
LAT_SIM_STEPS := 50
LAT_PAIRS := 0:1,2:3,4:5,6:7,8:9
LAT_EVAL_PER_CLASS := 100
LAT_GUIDANCE := 2
LAT_SOLVER := heun
else
# The default and QUALITY=long differ only in how long the two networks train.
LAT_TRAIN_N := 60000
LAT_VAE_FLAGS := --channels 16,32,64 --latent-channels 4 --blocks 1 --scale-samples 5000 --beta 0.1
LAT_VAE_BATCH := 32
LAT_FLOW_FLAGS := --width 64 --depth 4 --heads 4 --ema 0.999 --time-density logit-normal
LAT_FLOW_BATCH := 64
LAT_PER_CLASS := 8
LAT_SIM_STEPS := 25
LAT_PAIRS := 0:1,2:3,4:5,6:7
LAT_EVAL_PER_CLASS := 100
LAT_SOLVER := heun
# Each recipe's w is the lowest-FID scale at which its trained model kept the accuracy goal
# (README: 3.25 for the default, with the spread over training seeds; 2.5 for the long one).
ifeq ($(QUALITY),long)
LAT_VAE_STEPS := 3000
LAT_FLOW_STEPS := 16000
LAT_GUIDANCE := 2.5
else
LAT_VAE_STEPS := 1000
LAT_FLOW_STEPS := 6200
LAT_GUIDANCE := 3.25
endif
endif
# Guidance applies for t in LAT_INTERVAL only (Kynkäänniemi et al. 2024; guide --interval): the
# conditional model alone near the noise end keeps the samples of a class diverse.
LAT_INTERVAL ?= 0.4,1
LAT_FLOW_LR := 1e-3
LAT_VAE_LR := 2e-3
LAT_INTERP_STEPS := 10
LAT_N := $(shell echo $$(( $(LAT_CLASSES) * $(LAT_PER_CLASS) )))
LAT_EVAL_N := $(shell echo $$(( $(LAT_CLASSES) * $(LAT_EVAL_PER_CLASS) )))
# Network evaluations per sample: Heun takes two per step, Euler one; inside the guidance
# interval each is one call on a doubled batch (the conditional and the unconditional branch).
LAT_NFE := $(if $(filter heun,$(LAT_SOLVER)),$(shell echo $$(( 2 * $(LAT_SIM_STEPS) ))),$(LAT_SIM_STEPS))

.PHONY: latent latent-vae
latent: $(LAT)/grid.png $(LAT)/recon.png $(LAT)/interpolation.png $(LAT)/vae-loss.png $(LAT)/flow-loss.png $(LAT)/metrics.json
	@echo "latent diffusion: the outputs are in $(LAT)/"
	@echo "  grid.png (generated, a row per class)  recon.png  interpolation.png  vae-loss.png  flow-loss.png"
	@echo "  metrics.json  vae-loss.jsonl  flow-loss.jsonl  vae.safetensors  flow.safetensors"
latent-vae: $(LAT)/recon.png $(LAT)/interpolation.png $(LAT)/vae-metrics.json $(LAT)/latents.npy \
	$(LAT)/vae-loss.png $(LAT)/recon-metrics.json

$(LAT):
	mkdir -p $@

$(LAT_TRAIN) $(LAT_LABELS) &: $(TOOLS) | fashion-mnist-installed $(LAT)
	$(call stage_time,latent/import-train) import-data --dataset fashion-mnist --split train --pad $(LAT_PAD) --limit $(LAT_TRAIN_N) -q \
		-o $(LAT_TRAIN) --labels-out $(LAT_LABELS)

$(LAT_TEST): $(TOOLS) | fashion-mnist-installed $(LAT)
	$(call stage_time,latent/import-test) import-data --dataset fashion-mnist --split test --pad $(LAT_PAD) --limit $(LAT_EVAL_N) -q -o $@

$(LAT_HELDOUT) $(LAT_HELDOUT_LABELS) &: $(TOOLS) | fashion-mnist-installed $(LAT)
	import-data --dataset fashion-mnist --split test --limit $(LAT_EVAL_N) -q \
		-o $(LAT_HELDOUT) --labels-out $(LAT_HELDOUT_LABELS)

# The VAE, its reconstruction grid and its loss curve come out of one run.
$(LAT)/vae.safetensors $(LAT)/recon.png $(LAT)/vae-loss.jsonl &: $(LAT_TRAIN) $(TOOLS) | $(LAT)
	$(call stage_time,latent/fit-vae) fit-vae --data $(LAT_TRAIN) $(LAT_VAE_FLAGS) --steps $(LAT_VAE_STEPS) --batch $(LAT_VAE_BATCH) \
		--lr $(LAT_VAE_LR) --decay cosine --seed $(LAT_SEED) \
		--log $(LAT)/vae-loss.jsonl --log-every 50 --recon-grid $(LAT)/recon.png \
		--checkpoint-every $(LAT_VAE_STEPS) -q -o $(LAT)/vae.safetensors

# Training latents: scaled posterior means (unit variance), streamed through the encoder.
$(LAT)/latents.npy: $(LAT_TRAIN) $(LAT)/vae.safetensors $(TOOLS)
	$(call stage_time,latent/encode-vae) encode-vae $(LAT_TRAIN) --model $(LAT)/vae.safetensors --mean -q -o $@

$(LAT)/vae-metrics.json: $(LAT_TEST) $(LAT)/vae.safetensors $(TOOLS)
	$(call stage_time,latent/evaluate-vae) evaluate-vae $(LAT_TEST) --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/interpolation.npy: $(LAT_TEST) $(LAT)/vae.safetensors $(TOOLS)
	interpolate-vae $(LAT_TEST) --model $(LAT)/vae.safetensors --pairs $(LAT_PAIRS) \
		--steps $(LAT_INTERP_STEPS) -q -o $@

$(LAT)/interpolation.png: $(LAT)/interpolation.npy $(TOOLS)
	render-grid $< --cols $(LAT_INTERP_STEPS) --range -1,1 --upscale 2 \
		--title "VAE latent interpolation (test images)" -o $@

# The flow model on the latents: a class-conditional DiT, patch 1 (one token per latent pixel).
$(LAT)/flow.safetensors $(LAT)/flow-loss.jsonl &: $(LAT)/latents.npy $(LAT_LABELS) $(TOOLS)
	$(call stage_time,latent/fit-velocity) fit-velocity --data $(LAT)/latents.npy --labels $(LAT_LABELS) --label-dropout 0.1 \
		--arch dit --patch 1 $(LAT_FLOW_FLAGS) --steps $(LAT_FLOW_STEPS) --batch $(LAT_FLOW_BATCH) \
		--lr $(LAT_FLOW_LR) --decay cosine --seed $(LAT_SEED) \
		--log $(LAT)/flow-loss.jsonl --log-every 50 -q -o $(LAT)/flow.safetensors

# The loss curves, beside their models.
$(LAT)/%-loss.png: $(LAT)/%-loss.jsonl $(TOOLS)
	render-plot $< --x step --y loss --smooth 5 \
		--title "$(if $(filter vae,$*),VAE: negative ELBO (nats per image),Flow matching loss) against the step" -o $@

# Classifier-free guidance at scale w for LAT_PER_CLASS samples of every class, class by class.
$(LAT)/guided.json: $(LAT)/flow.safetensors $(TOOLS)
	guide --model $< --each $(LAT_PER_CLASS) --scale $(LAT_GUIDANCE) --interval $(LAT_INTERVAL) -o $@

$(LAT)/samples-latent.npy: $(LAT)/guided.json $(TOOLS)
	sample-noise -n $(LAT_N) --shape $(LAT_LATENT) --seed $(LAT_SEED) \
		| $(call stage_time,latent/simulate-sde) simulate-sde --field $(LAT)/guided.json --solver $(LAT_SOLVER) --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q -o $@

$(LAT)/samples.npy: $(LAT)/samples-latent.npy $(LAT)/vae.safetensors $(TOOLS)
	$(call stage_time,latent/decode-vae) decode-vae $< --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/grid.png: $(LAT)/samples.npy $(TOOLS)
	render-grid $< --cols $(LAT_PER_CLASS) --range -1,1 --upscale 2 --row-labels "$(FASHION_CLASS_NAMES)" \
		--title "Latent flow matching, CFG w = $(LAT_GUIDANCE)" -o $@

# Metrics: fresh noise (another seed than the grid), each class LAT_EVAL_PER_CLASS times.
$(LAT)/eval-guided.json $(LAT)/eval-labels.npy &: $(LAT)/flow.safetensors $(TOOLS)
	guide --model $< --each $(LAT_EVAL_PER_CLASS) --scale $(LAT_GUIDANCE) --interval $(LAT_INTERVAL) \
		--labels-out $(LAT)/eval-labels.npy -o $(LAT)/eval-guided.json

$(LAT)/eval-samples.npy: $(LAT)/eval-guided.json $(LAT)/vae.safetensors $(TOOLS)
	sample-noise -n $(LAT_EVAL_N) --shape $(LAT_LATENT) \
		--seed $$(( $(LAT_SEED) + 100 )) \
		| $(call stage_time,latent/simulate-sde-eval) simulate-sde --field $< --solver $(LAT_SOLVER) --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/eval-metrics.json: $(LAT)/eval-samples.npy $(LAT)/eval-labels.npy $(CLASSIFIER) \
		$(FASHION_TRAIN_IMAGES) $(LAT_HELDOUT) $(LAT_HELDOUT_LABELS) $(TOOLS)
	$(call stage_time,latent/evaluate) evaluate $< --labels $(LAT)/eval-labels.npy --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(LAT_HELDOUT) \
		--heldout-labels $(LAT_HELDOUT_LABELS) --kid-subsets $(KID_SUBSETS) -o $@

# The VAE alone: its reconstructions D(mu(x)) of the held-out images, scored against the same
# reference with those very images as the floor (a perfect autoencoder scores the floor).
$(LAT)/recon-test.npy: $(LAT_TEST) $(LAT)/vae.safetensors $(TOOLS)
	encode-vae $(LAT_TEST) --model $(LAT)/vae.safetensors --mean -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/recon-metrics.json: $(LAT)/recon-test.npy $(CLASSIFIER) $(FASHION_TRAIN_IMAGES) \
		$(LAT_HELDOUT) $(LAT_HELDOUT_LABELS) $(TOOLS)
	$(call stage_time,latent/evaluate-recon) evaluate $< --labels $(LAT_HELDOUT_LABELS) --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(LAT_HELDOUT) \
		--heldout-labels $(LAT_HELDOUT_LABELS) --kid-subsets $(KID_SUBSETS) -o $@

# The likelihood of the latent flow (unconditional: the null label) on held-out latents: the
# first 1 / LAT_LIK_PARTS of the held-out test images (100 of 1,000), encoded as the training
# latents were; log p by the change of variables along the ODE with Hutchinson's estimator (2
# probes each; Heun with 10 steps: 8 and 32 steps differ by 0.003 bits per dimension). 24 s on 2
# busy cores. Bits per dimension of a continuous density (latents are not discrete data).
LAT_LIK_PARTS := $(if $(SMALL),2,10)
$(LAT)/likelihood.json: $(LAT)/flow.safetensors $(LAT_TEST) $(LAT)/vae.safetensors $(TOOLS)
	encode-vae $(LAT_TEST) --model $(LAT)/vae.safetensors --mean -q \
		| concat-npy --split $(LAT_LIK_PARTS) -o '$(LAT)/heldout-latents-{}.npy'
	$(call stage_time,latent/likelihood) likelihood $(LAT)/heldout-latents-0.npy --model $< \
		--divergence hutchinson --probes 2 --solver heun --steps 10 -q -o $@

# One report: how it was sampled, the VAE's reconstructions and the guided samples, each with
# its classifier-FID, KID and accuracy and the floor of the same held-out images, and the
# latent flow's likelihood of held-out latents.
$(LAT)/metrics.json: $(LAT)/vae-metrics.json $(LAT)/recon-metrics.json $(LAT)/eval-metrics.json \
		$(LAT)/likelihood.json
	{ echo '{"n": $(LAT_EVAL_N), "guidance": $(LAT_GUIDANCE), "guidance_interval": [$(LAT_INTERVAL)],'; \
	  echo '"sampler": {"solver": "$(LAT_SOLVER)",'; \
	  echo '"steps": $(LAT_SIM_STEPS), "nfe_per_sample": $(LAT_NFE)}, "quality": "$(QUALITY)",'; \
	  echo '"vae":'; cat $(LAT)/vae-metrics.json; \
	  echo ', "reconstruction":'; cat $(LAT)/recon-metrics.json; \
	  echo ', "samples":'; cat $(LAT)/eval-metrics.json; \
	  echo ', "likelihood":'; cat $(LAT)/likelihood.json; echo '}'; } > $@.tmp && mv $@.tmp $@

# The guidance trade-off: the same LAT_EVAL_N fresh samples at each scale in LAT_SWEEP_WS,
# classifier-FID and guided accuracy against w, as JSON and a line plot.
#   make latent-guidance   $(LAT)/guidance.json: [{"guidance": w, "solver", "steps",
#                          "evaluate": evaluate's report}, ...]; $(LAT)/guidance.png
LAT_SWEEP_WS ?= 1 1.5 2 3 5
.PHONY: latent-guidance
latent-guidance: $(LAT)/guidance.png

$(LAT)/sweep/w%.json: $(LAT)/flow.safetensors $(LAT)/vae.safetensors $(CLASSIFIER) \
		$(FASHION_TRAIN_IMAGES) $(LAT_HELDOUT) $(LAT_HELDOUT_LABELS) $(TOOLS)
	@mkdir -p $(@D)
	guide --model $(LAT)/flow.safetensors --each $(LAT_EVAL_PER_CLASS) --scale $* --interval $(LAT_INTERVAL) \
		--labels-out $(@D)/labels-w$*.npy -o $(@D)/guided-w$*.json
	sample-noise -n $(LAT_EVAL_N) --shape $(LAT_LATENT) --seed $$(( $(LAT_SEED) + 100 )) \
		| simulate-sde --field $(@D)/guided-w$*.json --solver $(LAT_SOLVER) --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $(@D)/samples-w$*.npy
	evaluate $(@D)/samples-w$*.npy --labels $(@D)/labels-w$*.npy --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(LAT_HELDOUT) \
		--heldout-labels $(LAT_HELDOUT_LABELS) --kid-subsets $(KID_SUBSETS) -o $(@D)/eval-w$*.json
	{ echo '{"guidance": $*, "interval": [$(LAT_INTERVAL)], "solver": "$(LAT_SOLVER)", "steps": $(LAT_SIM_STEPS), "evaluate":'; \
	  cat $(@D)/eval-w$*.json; echo '}'; } > $@.tmp && mv $@.tmp $@

$(LAT)/guidance.json: $(foreach w,$(LAT_SWEEP_WS),$(LAT)/sweep/w$(w).json)
	{ echo '['; sep=; for f in $^; do echo "$$sep"; cat $$f; sep=,; done; echo ']'; } > $@.tmp && mv $@.tmp $@

$(LAT)/guidance.png: $(LAT)/guidance.json $(TOOLS)
	render-plot $< --x guidance \
		--y "evaluate.classifier_fid.value=samples+evaluate.floor.classifier_fid.value=real test images,evaluate.guided_accuracy.value=samples+evaluate.floor.guided_accuracy.value=real test images" \
		--y-labels "classifier-FID;guided accuracy" --x-label "guidance scale w" \
		--title "Classifier-free guidance on t in [$(LAT_INTERVAL)]: quality against class fidelity ($(LAT_EVAL_N) samples, $(LAT_SOLVER), $(LAT_SIM_STEPS) steps)" -o $@

# Many guided samples in parts, for several cores or machines (issue 31): part i of SHARDS
# draws samples [i N / SHARDS, (i + 1) N / SHARDS) by their index (sample-noise --first,
# simulate-sde --first: each sample's noise and Brownian path follow its index, and the guide
# spec holds every sample's label), and concat-npy joins the parts. The joined file is the same
# bytes for any SHARDS. N / 10 samples of every class, class by class (N a multiple of 10).
#   make latent-samples N=50000 SHARDS=4 -j4   $(LAT)/samples-N/samples.npy (N, 1, 32, 32) in
#                           [-1, 1] and labels.npy; each part runs on cores / 4 threads
#   make latent-samples-part SHARD=i SHARDS=K N=...   only part i (one task of a cluster's job
#                           array on a shared file system; README, "Beyond one CPU"), then
#                           `make latent-samples SHARDS=K N=...` joins the parts
N ?= 1000
SHARDS ?= 1
LAT_MANY := $(LAT)/samples-$(N)
LAT_MANY_PARTS = $(foreach i,$(shell seq 0 $$(( $(SHARDS) - 1 ))),$(LAT_MANY)/part-$(i)-of-$(SHARDS).npy)

.PHONY: latent-samples latent-samples-part
ifneq ($(filter latent-samples%,$(MAKECMDGOALS)),)
ifneq ($(shell [ $$(( $(N) % $(LAT_CLASSES) )) -eq 0 ] 2>/dev/null && [ $(N) -gt 0 ] && echo ok),ok)
$(error latent-samples needs N, a positive multiple of $(LAT_CLASSES) (the classes), got N=$(N))
endif
endif
ifneq ($(filter latent-samples-part,$(MAKECMDGOALS)),)
ifneq ($(shell [ "$(SHARD)" -ge 0 ] 2>/dev/null && [ "$(SHARD)" -lt "$(SHARDS)" ] && echo ok),ok)
$(error latent-samples-part needs SHARD=i with 0 <= i < SHARDS (SHARDS=$(SHARDS)), got SHARD=$(SHARD))
endif
endif
latent-samples: $(LAT_MANY)/samples.npy
	@echo "latent-samples: $(N) samples in $(LAT_MANY)/samples.npy, labels in $(LAT_MANY)/labels.npy"
latent-samples-part: $(LAT_MANY)/part-$(SHARD)-of-$(SHARDS).npy

$(LAT_MANY)/guided.json $(LAT_MANY)/labels.npy &: $(LAT)/flow.safetensors $(TOOLS)
	@mkdir -p $(@D)
	guide --model $< --each $$(( $(N) / $(LAT_CLASSES) )) --scale $(LAT_GUIDANCE) --interval $(LAT_INTERVAL) \
		--labels-out $(LAT_MANY)/labels.npy -o $(LAT_MANY)/guided.json

$(LAT_MANY)/part-%-of-$(SHARDS).npy: $(LAT_MANY)/guided.json $(LAT)/vae.safetensors $(TOOLS)
	first=$$(( $* * $(N) / $(SHARDS) )); end=$$(( ($* + 1) * $(N) / $(SHARDS) )); \
	sample-noise --first $$first -n $$(( end - first )) --shape $(LAT_LATENT) --seed $$(( $(LAT_SEED) + 200 )) \
		| $(call stage_time,latent/samples-part-$*) simulate-sde --field $< --first $$first --solver $(LAT_SOLVER) \
			--steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $@

$(LAT_MANY)/samples.npy: $(LAT_MANY_PARTS) $(TOOLS)
	concat-npy $(LAT_MANY_PARTS) -o $@

# ---- classifier guidance beside CFG on the main job's latent DiT (issue 27; the 2D half is
# `make guidance`, pipelines/guidance.mk, whose GD_METHODS and GD_SEED this uses) ----
#   make guidance-latent   out/guidance/latent/guidance.json and guidance.png
# A time-conditioned CNN classifier (tcnn) on the main job's training latents (4x8x8, CondOT
# like the DiT, uniform times; held-out accuracy on the encoded test images is in its model
# file) guides the DiT's unconditional branch (its null label); CFG guides the same DiT. At
# each w in GDL_WS both draw LAT_EVAL_PER_CLASS samples of every class from the same noise with
# the main job's sampler (LAT_SOLVER, LAT_SIM_STEPS), decoded and scored by evaluate against the
# training images with the metrics classifier (classifier-FID, guided accuracy; "floor": real
# test images). CFG guides on the main job's interval (LAT_INTERVAL; the conditional model
# elsewhere), classifier guidance at every time (GDL_CLS_INTERVAL): on [0.4, 1] its unconditional
# base has chosen the class before the classifier acts (measured: accuracy 0.15 at w = 1, 0.48
# on [0, 1]). The JSON is [{"method", "w", "interval", "evaluate": evaluate's report}, ...].
GDL := $(GD)/latent
GDL_CLS_INTERVAL ?= 0,1
gdl_interval = $(if $(filter cfg,$(1)),$(LAT_INTERVAL),$(GDL_CLS_INTERVAL))
ifeq ($(SMALL),)
GDL_WS := 1 3 5
GDL_FIT := --channels 32,64 --features 128 --steps 3000 --batch 128 --lr 2e-3
else
GDL_WS := 1 3
GDL_FIT := --channels 8,8 --features 16 --steps 5 --batch 8 --lr 2e-3
endif
GDL_RUNS := $(foreach m,$(GD_METHODS),$(foreach w,$(GDL_WS),$(m)-w$(w)))

.PHONY: guidance-latent
guidance-latent: $(GDL)/guidance.json $(GDL)/guidance.png
	@echo "guidance-latent: table and figure in $(GDL)/"

$(GDL)/test-latents.npy: $(LAT_TEST) $(LAT)/vae.safetensors $(TOOLS)
	@mkdir -p $(@D)
	encode-vae $(LAT_TEST) --model $(LAT)/vae.safetensors --mean -q -o $@

$(GDL)/classifier.safetensors: $(LAT)/latents.npy $(LAT_LABELS) $(GDL)/test-latents.npy $(LAT_HELDOUT_LABELS)
	$(call stage_time,guidance/fit-noisy-classifier) fit-noisy-classifier --data $(LAT)/latents.npy \
		--labels $(LAT_LABELS) --path condot --test-data $(GDL)/test-latents.npy \
		--test-labels $(LAT_HELDOUT_LABELS) $(GDL_FIT) --seed $(GD_SEED) \
		--log $(GDL)/classifier.log.jsonl -q -o $@

gdl_flags = $(if $(filter cfg,$(1)),--scale $(2),--classifier $(GDL)/classifier.safetensors --classifier-scale $(2))
define gdl_run
$(GDL)/$(1)-w$(2).json: $(LAT)/flow.safetensors $(LAT)/vae.safetensors $(CLASSIFIER) $(FASHION_TRAIN_IMAGES) \
		$(LAT_HELDOUT) $(LAT_HELDOUT_LABELS) $(if $(filter classifier,$(1)),$(GDL)/classifier.safetensors) $(TOOLS)
	@mkdir -p $$(@D)
	guide --model $(LAT)/flow.safetensors --each $(LAT_EVAL_PER_CLASS) $(call gdl_flags,$(1),$(2)) \
		--interval $(call gdl_interval,$(1)) --labels-out $(GDL)/$(1)-w$(2).labels.npy -o $(GDL)/$(1)-w$(2).field.json
	sample-noise -n $(LAT_EVAL_N) --shape $(LAT_LATENT) --seed $$$$(( $(LAT_SEED) + 100 )) \
		| $(call stage_time,guidance/simulate-$(1)-w$(2)) simulate-sde --field $(GDL)/$(1)-w$(2).field.json \
		  --solver $(LAT_SOLVER) --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $(GDL)/$(1)-w$(2).npy
	evaluate $(GDL)/$(1)-w$(2).npy --labels $(GDL)/$(1)-w$(2).labels.npy --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(LAT_HELDOUT) \
		--heldout-labels $(LAT_HELDOUT_LABELS) --kid-subsets $(KID_SUBSETS) -q -o $(GDL)/$(1)-w$(2).eval.json
	{ echo '{"method": "$(1)", "w": $(2), "interval": [$(call gdl_interval,$(1))], "evaluate":'; \
	  cat $(GDL)/$(1)-w$(2).eval.json; echo '}'; } > $$@.tmp && mv $$@.tmp $$@
endef
$(foreach m,$(GD_METHODS),$(foreach w,$(GDL_WS),$(eval $(call gdl_run,$(m),$(w)))))

$(GDL)/guidance.json: $(foreach r,$(GDL_RUNS),$(GDL)/$(r).json)
	{ echo '['; sep=; for f in $^; do echo "$$sep"; cat $$f; sep=,; done; echo ']'; } > $@.tmp && mv $@.tmp $@

$(GDL)/guidance.png: $(GDL)/guidance.json $(TOOLS)
	render-plot $< --x w --series method \
		--y "evaluate.classifier_fid.value+evaluate.floor.classifier_fid.value=real test images,evaluate.guided_accuracy.value+evaluate.floor.guided_accuracy.value=real test images" \
		--y-labels "classifier-FID;guided accuracy" --x-label "guidance scale w" \
		--title "Fashion-MNIST latents: CFG (t in [$(LAT_INTERVAL)]) and classifier guidance ($(LAT_EVAL_N) samples, $(LAT_SOLVER), $(LAT_SIM_STEPS) steps)" -o $@
