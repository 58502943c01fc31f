# Latent diffusion end to end (notes section 6, Algorithm 6), the main job, through the tools only:
#   Fashion-MNIST padded to 32x32 -> fit-vae -> encode-vae (train set, posterior means, scaled to
#   unit variance) -> fit-velocity (a class-conditional DiT with patch 1 on the 4x8x8 latents,
#   label dropout for classifier-free guidance) -> guide (w = LAT_GUIDANCE, every class) ->
#   sample-noise | simulate-sde -> decode-vae -> render-grid.
#
#   make latent           everything below
#   make latent-vae       the VAE stages only (fit, reconstruction grid, loss curve, latents,
#                         interpolation figure, VAE metrics): runs on its own
#   out/latent/grid.png           generated images, a row per class
#   out/latent/recon.png          8 training images over their VAE reconstructions
#   out/latent/interpolation.png  decoded straight lines between pairs of test latents
#   out/latent/vae-loss.jsonl, out/latent/flow-loss.jsonl   loss curves (--log)
#   out/latent/vae-metrics.json   VAE reconstruction MSE, mean-image MSE, KL, latent std (test set)
#   out/latent/metrics.json       {"vae": the VAE metrics, "samples": evaluate's classifier-FID,
#                                 KID, guided accuracy and class histogram of LAT_EVAL_PER_CLASS
#                                 fresh samples of every class (centre-cropped to 28x28) against
#                                 the training images, with the real test images as the floor}
# SMALL=1: tiny sizes (seconds; used by the smoke test); FULL=1: the lab's sizes (GPU).
# Measured 2026-11-25 at the default sizes on two idle AMD EPYC cores (release build; every
# stage's wall time, CPU time and peak memory land in $(OUT)/stages.jsonl): fit-vae 401 s (480
# steps, peak 3.7 GB), encode-vae 48 s, fit-velocity 373 s (1500 DiT steps), sampling, decoding
# and metrics about 75 s: 15 minutes, plus fit-classifier (once, shared with lab 3) 113 s
# and the data import (seconds). Result: every class clearly recognisable (grid.png); the
# classifier gives 93.8% of 500 samples guided at w = 3 the class asked for (88.8% of real test
# images); classifier-FID 117 against 16 for 500 real test images; VAE test MSE 0.024 against
# 0.263 for the mean image. (600 VAE and 2000 DiT steps gave 97.4% and FID 96, ~26 minutes.)

LAT := $(OUT)/latent
LAT_SEED := 7
LAT_CLASSES := 10
LAT_GUIDANCE := 3
LAT_PAD := 32
LAT_LATENT := 4,8,8
# The first LAT_TRAIN_N training images (and their labels), padded to 32x32 (the lab's way;
# 28x28 would work too, giving 4x7x7 latents); the test set for the VAE's metrics and figures
# (the first LAT_TEST_N test images).
LAT_TRAIN := $(LAT)/train-images.npy
LAT_LABELS := $(LAT)/train-labels.npy
LAT_TEST := $(LAT)/test-images.npy

ifneq ($(SMALL),)
LAT_TRAIN_N := 512
LAT_TEST_N := 64
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
else ifneq ($(FULL),)
# The lab's sizes: a wider VAE with attention, the lab's 128 x 4 x 4 latents would be
# --channels 64,128,128,128 --latent-channels 128; we keep 4 x 8 x 8 for the patch-1 DiT.
LAT_TRAIN_N := 60000
LAT_TEST_N := 10000
LAT_VAE_FLAGS := --channels 64,128,128 --latent-channels 4 --blocks 2 --attention --ema 0.999
LAT_VAE_STEPS := 20000
LAT_VAE_BATCH := 128
LAT_FLOW_FLAGS := --width 256 --depth 8 --heads 8 --ema 0.9999
LAT_FLOW_STEPS := 50000
LAT_FLOW_BATCH := 256
LAT_PER_CLASS := 10
LAT_SIM_STEPS := 100
LAT_PAIRS := 0:1,2:3,4:5,6:7,8:9
LAT_EVAL_PER_CLASS := 100
else
# Measured on two idle cores: 0.8 s per VAE step at batch 32 with channels 16,32,64 and 0.25 s
# per DiT step at batch 64; 20,000 images encode in 48 s.
LAT_TRAIN_N := 20000
LAT_TEST_N := 2000
LAT_VAE_FLAGS := --channels 16,32,64 --latent-channels 4 --blocks 1 --scale-samples 5000
LAT_VAE_STEPS := 480
LAT_VAE_BATCH := 32
LAT_FLOW_FLAGS := --width 64 --depth 3 --heads 4
LAT_FLOW_STEPS := 1500
LAT_FLOW_BATCH := 64
LAT_PER_CLASS := 8
LAT_SIM_STEPS := 50
LAT_PAIRS := 0:1,2:3,4:5,6:7
LAT_EVAL_PER_CLASS := 50
endif
LAT_FLOW_LR := 1e-3
LAT_VAE_LR := 2e-3
LAT_INTERP_STEPS := 10
LAT_N := $(shell echo $$(( $(LAT_CLASSES) * $(LAT_PER_CLASS) )))

.PHONY: latent latent-vae
latent: $(LAT)/grid.png $(LAT)/recon.png $(LAT)/interpolation.png $(LAT)/metrics.json
	@echo "latent diffusion: the outputs are in $(LAT)/"
	@echo "  grid.png (generated, a row per class)  recon.png  interpolation.png"
	@echo "  metrics.json  vae-loss.jsonl  flow-loss.jsonl  vae.safetensors  flow.safetensors"
latent-vae: $(LAT)/recon.png $(LAT)/interpolation.png $(LAT)/vae-metrics.json $(LAT)/latents.npy

$(LAT):
	mkdir -p $@

$(LAT_TRAIN) $(LAT_LABELS) &: $(TOOLS) | fashion-mnist-installed $(LAT)
	$(call stage_time,latent/import-train) import-data --dataset fashion-mnist --split train --pad $(LAT_PAD) --limit $(LAT_TRAIN_N) -q \
		-o $(LAT_TRAIN) --labels-out $(LAT_LABELS)

$(LAT_TEST): $(TOOLS) | fashion-mnist-installed $(LAT)
	$(call stage_time,latent/import-test) import-data --dataset fashion-mnist --split test --pad $(LAT_PAD) --limit $(LAT_TEST_N) -q -o $@

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

# Classifier-free guidance at scale w for LAT_PER_CLASS samples of every class, class by class.
$(LAT)/guided.json: $(LAT)/flow.safetensors $(TOOLS)
	guide --model $< --each $(LAT_PER_CLASS) --scale $(LAT_GUIDANCE) -o $@

$(LAT)/samples-latent.npy: $(LAT)/guided.json $(TOOLS)
	sample-noise -n $(LAT_N) --shape $(LAT_LATENT) --seed $(LAT_SEED) \
		| $(call stage_time,latent/simulate-sde) simulate-sde --field $(LAT)/guided.json --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q -o $@

$(LAT)/samples.npy: $(LAT)/samples-latent.npy $(LAT)/vae.safetensors $(TOOLS)
	$(call stage_time,latent/decode-vae) decode-vae $< --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/grid.png: $(LAT)/samples.npy $(TOOLS)
	render-grid $< --cols $(LAT_PER_CLASS) --range -1,1 --upscale 2 \
		--title "Latent flow matching, CFG w = $(LAT_GUIDANCE), a row per class" -o $@

# Metrics: fresh noise (another seed than the grid), each class LAT_EVAL_PER_CLASS times.
$(LAT)/eval-guided.json $(LAT)/eval-labels.npy &: $(LAT)/flow.safetensors $(TOOLS)
	guide --model $< --each $(LAT_EVAL_PER_CLASS) --scale $(LAT_GUIDANCE) \
		--labels-out $(LAT)/eval-labels.npy -o $(LAT)/eval-guided.json

$(LAT)/eval-samples.npy: $(LAT)/eval-guided.json $(LAT)/vae.safetensors $(TOOLS)
	sample-noise -n $$(( $(LAT_CLASSES) * $(LAT_EVAL_PER_CLASS) )) --shape $(LAT_LATENT) \
		--seed $$(( $(LAT_SEED) + 100 )) \
		| $(call stage_time,latent/simulate-sde-eval) simulate-sde --field $< --steps $(LAT_SIM_STEPS) --seed $(LAT_SEED) -q \
		| decode-vae - --model $(LAT)/vae.safetensors -q -o $@

$(LAT)/eval-metrics.json: $(LAT)/eval-samples.npy $(LAT)/eval-labels.npy $(CLASSIFIER) \
		$(FASHION_TRAIN_IMAGES) $(FASHION_TEST_IMAGES) $(FASHION_TEST_LABELS) $(TOOLS)
	$(call stage_time,latent/evaluate) evaluate $< --labels $(LAT)/eval-labels.npy --classifier $(CLASSIFIER) \
		--reference $(FASHION_TRAIN_IMAGES) --heldout $(FASHION_TEST_IMAGES) \
		--heldout-labels $(FASHION_TEST_LABELS) --kid-subsets $(KID_SUBSETS) -o $@

$(LAT)/metrics.json: $(LAT)/vae-metrics.json $(LAT)/eval-metrics.json
	{ echo '{"guidance": $(LAT_GUIDANCE), "sampling_steps": $(LAT_SIM_STEPS),'; \
	  echo '"samples_per_class": $(LAT_EVAL_PER_CLASS), "vae":'; cat $(LAT)/vae-metrics.json; \
	  echo ', "samples":'; cat $(LAT)/eval-metrics.json; echo '}'; } > $@.tmp && mv $@.tmp $@
