# Paths and time densities (issue 28): the comparison the notes leave to the student, through
# the tools only.
#   make schedules          out/schedules/schedules.jsonl (one row per model, 2D)
#   make schedules-images   out/schedules/images.jsonl (one row per model, Fashion-MNIST)
# The same 2D MLP velocity model is trained on the checkerboard (N(0, I) source, independent
# pairs; ve from its own N(0, 50^2 I)) along each probability path (condot, sqrt, cosine, vp, ve;
# flowpipe::paths) with each
# density of the training time (uniform, logit-normal with m = 0, s = 1, and mode sampling with
# s = 1.29, Esser et al. 2024; flowpipe::paths::TimeDensity), and measured three ways against
# 2,000 held-out points: the energy distance of 2,000 samples by Euler with 8 steps and by Heun
# with 50 (the few-step error and the converged one), and the test NLL in nats per point by the
# change of variables (likelihood, exact divergence, dopri5). The checkerboard is uniform on half
# of [-5, 5]^2, so no model's NLL can be below log 50 = 3.912 on average. Each row:
# {"path", "time_density", "energy_distance_euler8", "energy_distance_heun50", "nll"}.
# The image half trains one small unconditional U-Net (16,32, one block per level, 800 steps at
# batch 32) on Fashion-MNIST per path and time density, and measures the classifier-FID (the
# shared metrics classifier, metrics.mk) of 500 samples against the training images, by Euler with
# 8 steps and Heun with 25: {"path", "time_density", "fid_euler8", "fid_heun25"}. The classifier
# only measures; it trains nothing here.
# SMALL=1 shrinks every size. The README ("Paths and time densities") has the measured table.

SCH := $(OUT)/schedules
SCH_SEED := 31
SCH_PATHS := condot sqrt cosine vp ve
SCH_TIMES := uniform logitnormal mode
SCH_TIME_uniform := uniform
SCH_TIME_logitnormal := logit-normal:0,1
SCH_TIME_mode := mode:1.29
ifeq ($(SMALL),)
SCH_N := 20000
SCH_TRAIN_STEPS := 1500
SCH_HIDDEN := 256,256,256
SCH_SAMPLES := 2000
else
SCH_N := 400
SCH_TRAIN_STEPS := 20
SCH_HIDDEN := 32,32
SCH_SAMPLES := 200
endif
SCH_FIT := --steps $(SCH_TRAIN_STEPS) --batch 256 --lr 1e-3 --decay cosine --ema 0.999 \
  --hidden $(SCH_HIDDEN) --seed $(SCH_SEED) -q
SCH_MODELS := $(foreach p,$(SCH_PATHS),$(foreach d,$(SCH_TIMES),$(p)-$(d)))

.PHONY: schedules
schedules: $(SCH)/schedules.jsonl
	@echo "schedules: the table is $(SCH)/schedules.jsonl"

$(SCH)/.dir:
	@mkdir -p $(@D) && touch $@

$(SCH)/train.npy: $(TOOLS) | $(SCH)/.dir
	sample-data checkerboard -n $(SCH_N) --seed $(SCH_SEED) -o $@
$(SCH)/ref.npy: $(TOOLS) | $(SCH)/.dir
	sample-data checkerboard -n $(SCH_SAMPLES) --seed 131 -o $@
# Each model's own p_init (N(0, I), or N(0, 50^2 I) for ve), from the same normal draws.
$(SCH)/%.noise.npy: $(SCH)/%.safetensors
	sample-noise -n $(SCH_SAMPLES) --model $< --seed 132 -o $@

# The energy distance of one evaluate report (the first "value" after "energy_distance").
sch_ed = awk '/"energy_distance"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)
# The path and the time density of a model's name, PATH-DENSITY.
sch_path = $(word 1,$(subst -, ,$(1)))
sch_time = $(SCH_TIME_$(word 2,$(subst -, ,$(1))))

# One model per path and time density; its two sampler runs and its likelihood in one JSON row.
$(SCH)/%.safetensors: $(SCH)/train.npy
	fit-velocity --data $< --path $(call sch_path,$*) --time-density $(call sch_time,$*) $(SCH_FIT) \
	  --log $(SCH)/$*.log.jsonl -o $@
$(SCH)/%.row.json: $(SCH)/%.safetensors $(SCH)/%.noise.npy $(SCH)/ref.npy
	simulate-sde -q $(SCH)/$*.noise.npy --field $< --solver euler --steps 8 \
	  | evaluate - --reference $(SCH)/ref.npy -q -o $(SCH)/$*.euler8.json
	simulate-sde -q $(SCH)/$*.noise.npy --field $< --solver heun --steps 50 \
	  | evaluate - --reference $(SCH)/ref.npy -q -o $(SCH)/$*.heun50.json
	likelihood $(SCH)/ref.npy --model $< -q -o $(SCH)/$*.nll.json
	printf '{"path": "%s", "time_density": "%s", "energy_distance_euler8": %s, "energy_distance_heun50": %s, "nll": %s}\n' \
	  $(call sch_path,$*) '$(call sch_time,$*)' "$$($(call sch_ed,$(SCH)/$*.euler8.json))" \
	  "$$($(call sch_ed,$(SCH)/$*.heun50.json))" \
	  "$$(sed -n 's/.*"nll":\([^,}]*\).*/\1/p' $(SCH)/$*.nll.json)" > $@.tmp && mv $@.tmp $@

.SECONDARY: $(foreach m,$(SCH_MODELS),$(SCH)/$(m).safetensors $(SCH)/$(m).noise.npy $(SCH)/$(m).row.json)

$(SCH)/schedules.jsonl: $(foreach m,$(SCH_MODELS),$(SCH)/$(m).row.json)
	cat $^ > $@.tmp && mv $@.tmp $@

# ------------------------------------------------------------------- the image half ----
SCHI := $(SCH)/images
ifeq ($(SMALL),)
SCHI_FIT := --channels 16,32 --blocks 1 --steps 800 --batch 32 --lr 2e-3 --warmup 50 --decay cosine \
  --ema 0.99
SCHI_SAMPLES := 500
SCHI_MODELS := $(SCH_MODELS)
else
SCHI_FIT := --channels 8,16 --blocks 1 --steps 3 --batch 4 --lr 1e-3
SCHI_SAMPLES := 6
# Two models (the test's time): VE's own noise and a non-uniform density.
SCHI_MODELS := condot-uniform ve-logitnormal
endif

.PHONY: schedules-images
schedules-images: $(SCH)/images.jsonl
	@echo "schedules-images: the table is $(SCH)/images.jsonl"

$(SCHI)/.dir:
	@mkdir -p $(@D) && touch $@

$(SCHI)/%.safetensors: $(FASHION_TRAIN_IMAGES) $(TOOLS) | $(SCHI)/.dir
	fit-velocity --data $< --arch unet $(SCHI_FIT) --path $(call sch_path,$*) \
	  --time-density $(call sch_time,$*) --seed $(SCH_SEED) -q --log $(SCHI)/$*.log.jsonl -o $@
$(SCHI)/%.noise.npy: $(SCHI)/%.safetensors
	sample-noise -n $(SCHI_SAMPLES) --model $< --seed 133 -o $@

# The classifier-FID of one evaluate report.
schi_fid = awk '/"classifier_fid"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)

$(SCHI)/%.row.json: $(SCHI)/%.safetensors $(SCHI)/%.noise.npy $(CLASSIFIER)
	simulate-sde -q $(SCHI)/$*.noise.npy --field $< --solver euler --steps 8 \
	  | evaluate - --classifier $(CLASSIFIER) --reference $(FASHION_TRAIN_IMAGES) -q -o $(SCHI)/$*.euler8.json
	simulate-sde -q $(SCHI)/$*.noise.npy --field $< --solver heun --steps 25 \
	  | evaluate - --classifier $(CLASSIFIER) --reference $(FASHION_TRAIN_IMAGES) -q -o $(SCHI)/$*.heun25.json
	printf '{"path": "%s", "time_density": "%s", "fid_euler8": %s, "fid_heun25": %s}\n' \
	  $(call sch_path,$*) '$(call sch_time,$*)' "$$($(call schi_fid,$(SCHI)/$*.euler8.json))" \
	  "$$($(call schi_fid,$(SCHI)/$*.heun25.json))" > $@.tmp && mv $@.tmp $@

.SECONDARY: $(foreach m,$(SCHI_MODELS),$(SCHI)/$(m).safetensors $(SCHI)/$(m).noise.npy $(SCHI)/$(m).row.json)

$(SCH)/images.jsonl: $(foreach m,$(SCHI_MODELS),$(SCHI)/$(m).row.json)
	cat $^ > $@.tmp && mv $@.tmp $@
