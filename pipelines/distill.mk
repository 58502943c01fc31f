# Few-step generation by distillation (notes section 7), through the tools only:
#   make distill          both parts below
#   make distill-2d       a checkerboard teacher on lab 2's data ($(DIS)/2d/teacher.safetensors,
#                         CondOT, MLP 4x64) distilled by reflow, flowmap and consistency, and
#                         beside them the few-step models fit-velocity --objective trains from
#                         the data alone at the teacher's budget (rows `<objective>-data`):
#     out/distill/table-2d.json   energy distance to held-out checkerboard samples per (model,
#                                 steps): the teacher with 1, 2, 4, 8, 16, 32, 100 Euler steps,
#                                 each student with 1, 2, 4 (NFE = steps)
#     out/distill/table-2d.txt    the same as a readable table
#     out/distill/grids-2d.png    the samples side by side: a row per model, a column per NFE
#   make distill-latent   the latent main job's model ($(LAT)/flow.safetensors, a DiT with CFG)
#                         distilled at its guidance w = $(LAT_GUIDANCE) (the student is
#                         conditional on the label, w fixed), and the models trained from the
#                         latents alone at the main job's budget, guided at the same w:
#     out/distill/table-latent.json  classifier-FID and guided accuracy per (model, steps) from
#                                    `evaluate --classifier` on the decoded images (the shared
#                                    classifier of metrics.mk) against the training images
#     out/distill/table-latent.txt   readable
#     out/distill/grids-latent.png   decoded samples: a panel per (model, steps), a row per class
# Every student starts from its teacher's weights (see flowpipe::distill). SMALL=1: seconds.
# Cost at the default sizes on 2 CPU cores: the 2D part took 7 minutes with lab2's teacher;
# the latent part 41 minutes wall (33 CPU-minutes, peak 3.0 GB) after the latent main job, on
# a machine shared with other jobs (measured 2026-11-25).
# Measured (2026-11-25, the main job's defaults, 500 samples at w = 3, classifier-FID against
# the training images; 500 real test images score 16):
#   teacher (Euler)  NFE 1: FID 478, accuracy 89.4%   NFE 4: 157, 93.2%   NFE 32: 118, 93.0%
#                    NFE 100: 115, 92.8%
#   reflow           NFE 1: 138, 88.8%   NFE 2: 135, 89.6%   NFE 4: 131, 89.8%
#   flowmap          NFE 1: 111, 85.6%   NFE 2:  99, 87.0%   NFE 4:  94, 87.0%
#   consistency      NFE 1: 130, 86.0%   NFE 2: 131, 87.2%   NFE 4: 137, 87.6%
# Every one-step student matches the teacher at 8-32 steps (the one-step teacher draws class
# means); the flow map beats the teacher at every NFE on FID, at a few points of accuracy.

DIS := $(OUT)/distill
DIS_SEED := 21
DIS_METHODS := reflow flowmap consistency
# fit-velocity's few-step objectives, trained from the data (the rows `<objective>-data`).
DIS_SCRATCH := shortcut meanflow consistency
DIS_MODELS := $(DIS_METHODS) $(foreach o,$(DIS_SCRATCH),$(o)-data)
DIS_TEACHER_NFE := 1 2 4 8 16 32 100
DIS_STUDENT_NFE := 1 2 4

ifeq ($(SMALL),)
DIS_TRAJ := 8192
DIS_TSTEPS := 64
DIS_STEPS := 3000
DIS_BATCH := 512
DIS_N := 2000
# Latent students: 1000 guided teacher trajectories of 16 Euler steps (the teacher's own
# sampler; 2 CFG branches per step) and 400 steps at batch 64 per method (measured: reflow
# and consistency about 8 minutes each, flowmap, 3 network passes a step, about 15).
DIS_LAT_TRAJ := 1000
DIS_LAT_TSTEPS := 16
DIS_LAT_STEPS := 400
DIS_LAT_BATCH := 64
DIS_LAT_PER_CLASS := 50
else
DIS_TRAJ := 256
DIS_TSTEPS := 8
DIS_STEPS := 30
DIS_BATCH := 64
DIS_N := 200
DIS_LAT_TRAJ := 40
DIS_LAT_TSTEPS := 4
DIS_LAT_STEPS := 5
DIS_LAT_BATCH := 16
DIS_LAT_PER_CLASS := 2
endif
DIS_LR := 1e-3

.PHONY: distill distill-2d distill-latent
distill: distill-2d distill-latent
distill-2d: $(DIS)/table-2d.json $(DIS)/grids-2d.png $(DIS)/nfe-2d.png $(DIS)/2d/teacher-loss.png \
	$(foreach m,$(DIS_MODELS),$(DIS)/2d/$(m)-loss.png)
distill-latent: $(DIS)/table-latent.json $(DIS)/grids-latent.png $(DIS)/nfe-latent.png \
	$(foreach m,$(DIS_MODELS),$(DIS)/latent/$(m)-loss.png)

# Each student's training loss, beside it.
$(DIS)/%-loss.png: $(DIS)/%.safetensors $(TOOLS)
	render-plot $(DIS)/$*.log.jsonl --y loss --log-y --smooth 5 --labels $(notdir $*) \
	  --title "Few-step models, $(notdir $*) ($(patsubst %/,%,$(dir $*))): training loss against the step" -o $@

# A table's rows as JSON lines, for render-plot.
dis_rows = grep '"model"' $(1) | sed 's/^ *//; s/,$$//' > $(2)

$(DIS)/2d $(DIS)/latent:
	@mkdir -p $@

DIS_EMPTY :=
DIS_SPACE := $(DIS_EMPTY) $(DIS_EMPTY)
# Panel titles of runs `model-steps`: "model NFE steps", separated by `;`.
# The steps are after the last `-` (a model's name may hold one: `shortcut-data-4`).
dis_steps = $(lastword $(subst -, ,$(1)))
dis_title = $(patsubst %-$(call dis_steps,$(1)),%,$(1)) NFE $(call dis_steps,$(1))
dis_titles = $(patsubst %;,%,$(subst ;$(DIS_SPACE),;,$(foreach r,$(1),$(call dis_title,$(r));)))

# Energy distance of one evaluate report (the first "value" after "energy_distance").
dis_ed = awk '/"energy_distance"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)

# ---------------------------------------------------------------- 2D: checkerboard ----
# lab2.mk is read after this file: its paths are spelled out here (prerequisites expand at once).
# The teacher is lab 2's checkerboard flow at the sizes lab 2 used until 2026-12-07 (MLP 4x64,
# 3000 steps), trained here on lab 2's data: its students stay small and the tables below hold.
DIS_CB := $(DIS)/2d/teacher.safetensors
DIS_CB_REF := $(OUT)/lab2/checkerboard-ref.npy
ifeq ($(SMALL),)
DIS_CB_STEPS := 3000
else
DIS_CB_STEPS := 30
endif

DIS_CB_FLAGS = --path condot --steps $(DIS_CB_STEPS) --batch 1000 --lr 1e-3 --hidden 64,64,64,64 -q --seed 2
$(DIS_CB): $(OUT)/lab2/checkerboard.npy $(TOOLS) | $(DIS)/2d
	fit-velocity --data $< $(DIS_CB_FLAGS) --log $(DIS)/2d/teacher.log.jsonl -o $@

# The few-step models trained from the data alone, without a teacher (fit-velocity --objective;
# model `<objective>-data`): the teacher's network, data, steps, batch and learning rate.
$(foreach o,$(DIS_SCRATCH),$(DIS)/2d/$(o)-data.safetensors): $(DIS)/2d/%-data.safetensors: \
  $(OUT)/lab2/checkerboard.npy $(TOOLS) | $(DIS)/2d
	fit-velocity --data $< $(DIS_CB_FLAGS) --objective $* --log $(DIS)/2d/$*-data.log.jsonl -o $@

$(DIS)/2d/teacher-loss.png: $(DIS_CB) $(TOOLS)
	render-plot $(DIS)/2d/teacher.log.jsonl --y loss --log-y --smooth 5 --labels teacher \
	  --title "Distillation, the 2D teacher (flow matching): training loss against the step" -o $@

$(DIS)/2d/noise.npy: $(TOOLS) | $(DIS)/2d
	sample-noise -n $(DIS_N) --shape 2 --seed $(DIS_SEED) -o $@

$(DIS)/2d/teacher-%.npy: $(DIS)/2d/noise.npy $(DIS_CB)
	simulate-sde -q $< --field $(DIS_CB) --steps $* -o $@

$(DIS)/2d/%.safetensors: $(DIS_CB) | $(DIS)/2d
	distill --teacher $(DIS_CB) --method $* --teacher-steps $(DIS_TSTEPS) \
	  --trajectories $(DIS_TRAJ) --steps $(DIS_STEPS) --batch $(DIS_BATCH) --lr $(DIS_LR) \
	  --seed $(DIS_SEED) --log $(DIS)/2d/$*.log.jsonl -q -o $@

define dis_2d_student
$(DIS)/2d/$(1)-%.npy: $(DIS)/2d/noise.npy $(DIS)/2d/$(1).safetensors
	sample-fewstep $$< --model $(DIS)/2d/$(1).safetensors --steps $$* --seed $(DIS_SEED) -q -o $$@
endef
$(foreach m,$(DIS_MODELS),$(eval $(call dis_2d_student,$(m))))

$(DIS)/2d/%.eval.json: $(DIS)/2d/%.npy $(DIS_CB_REF)
	evaluate $< --reference $(DIS_CB_REF) -q -o $@

DIS_2D_RUNS := $(foreach k,$(DIS_TEACHER_NFE),teacher-$(k)) \
               $(foreach m,$(DIS_MODELS),$(foreach k,$(DIS_STUDENT_NFE),$(m)-$(k)))

# Students and samples are products, not intermediates make may delete.
.SECONDARY: $(foreach m,$(DIS_MODELS),$(DIS)/2d/$(m).safetensors) \
            $(foreach r,$(DIS_2D_RUNS),$(DIS)/2d/$(r).npy $(DIS)/2d/$(r).eval.json)

# One row per (model, steps): {"model", "steps", "nfe", "energy_distance"}.
$(DIS)/table-2d.json: $(foreach r,$(DIS_2D_RUNS),$(DIS)/2d/$(r).eval.json)
	{ echo '{"metric": "energy distance to $(notdir $(DIS_CB_REF)) (lower is better)",'; \
	  echo ' "teacher": "$(DIS_CB) (Euler)", "rows": ['; sep=''; \
	  for r in $(DIS_2D_RUNS); do \
	    m=$${r%-*}; k=$${r##*-}; v=$$($(call dis_ed,$(DIS)/2d/$$r.eval.json)); \
	    printf '%s  {"model": "%s", "steps": %s, "nfe": %s, "energy_distance": %s}' "$$sep" "$$m" "$$k" "$$k" "$$v"; \
	    sep=$$',\n'; \
	  done; printf '\n]}\n'; } > $@.tmp && mv $@.tmp $@
	{ printf '%-18s %6s %18s\n' model NFE energy_distance; \
	  for r in $(DIS_2D_RUNS); do \
	    printf '%-18s %6s %18s\n' "$${r%-*}" "$${r##*-}" "$$($(call dis_ed,$(DIS)/2d/$$r.eval.json))"; \
	  done; } > $(DIS)/table-2d.txt
	@cat $(DIS)/table-2d.txt

DIS_2D_GRID := $(foreach k,1 2 4,teacher-$(k)) $(foreach m,$(DIS_MODELS),$(foreach k,$(DIS_STUDENT_NFE),$(m)-$(k)))
$(DIS)/grids-2d.png: $(foreach r,$(DIS_2D_GRID),$(DIS)/2d/$(r).npy)
	render-grid $^ --bounds $(L2_CB_BOUNDS) --panel-cols 3 \
	  --titles "$(call dis_titles,$(DIS_2D_GRID))" \
	  --title "Checkerboard: teacher (Euler), students and models from data, NFE 1, 2, 4" -o $@

# ------------------------------------------------------------- latent: the main job ----
# latent.mk is read after this file: its paths are spelled out here.
DIS_LAT_FLOW := $(OUT)/latent/flow.safetensors
DIS_LAT_VAE := $(OUT)/latent/vae.safetensors
DIS_LAT_N := $(shell echo $$(( 10 * $(DIS_LAT_PER_CLASS) )))
DIS_LAT_RUNS := $(foreach k,$(DIS_TEACHER_NFE),teacher-$(k)) \
                $(foreach m,$(DIS_MODELS),$(foreach k,$(DIS_STUDENT_NFE),$(m)-$(k)))

# The metrics: the shared classifier (metrics.mk; it reads the 32x32 samples' 28x28 centre) and
# the training images as the reference, as the main job's own metrics.json does.
DIS_LAT_CLS := $(CLASSIFIER)
DIS_LAT_REF := $(FASHION_TRAIN_IMAGES)

# Every class DIS_LAT_PER_CLASS times, guided at the main job's w; the labels for the students.
$(DIS)/latent/guided.json $(DIS)/latent/labels.npy &: $(DIS_LAT_FLOW) | $(DIS)/latent
	guide --model $(DIS_LAT_FLOW) --each $(DIS_LAT_PER_CLASS) --scale $(LAT_GUIDANCE) \
	  --labels-out $(DIS)/latent/labels.npy -o $(DIS)/latent/guided.json

$(DIS)/latent/noise.npy: $(TOOLS) | $(DIS)/latent
	sample-noise -n $(DIS_LAT_N) --shape $(LAT_LATENT) --seed $(DIS_SEED) -o $@

$(DIS)/latent/teacher-%.latent.npy: $(DIS)/latent/noise.npy $(DIS)/latent/guided.json
	simulate-sde -q $< --field $(DIS)/latent/guided.json --steps $* -o $@

$(DIS)/latent/%.safetensors: $(DIS_LAT_FLOW) | $(DIS)/latent
	distill --teacher $(DIS_LAT_FLOW) --method $* --guidance $(LAT_GUIDANCE) \
	  --teacher-steps $(DIS_LAT_TSTEPS) --teacher-solver euler --trajectories $(DIS_LAT_TRAJ) --chunk 250 \
	  --steps $(DIS_LAT_STEPS) --batch $(DIS_LAT_BATCH) --lr 3e-4 --warmup 50 \
	  --seed $(DIS_SEED) --log $(DIS)/latent/$*.log.jsonl -q -o $@

# The few-step models trained from the main job's latents alone: its DiT, steps, batch, learning
# rate, EMA, time density and label dropout, with --objective (each trains as long as the main
# job's flow model, shortcut and consistency a step with more network passes). They are
# sampled with CFG at the same w, the two branches mixed at every step (sample-fewstep
# --guidance); a distilled student has its w built in.
$(foreach o,$(DIS_SCRATCH),$(DIS)/latent/$(o)-data.safetensors): $(DIS)/latent/%-data.safetensors: \
  $(OUT)/latent/latents.npy $(OUT)/latent/train-labels.npy $(TOOLS) | $(DIS)/latent
	fit-velocity --data $(LAT)/latents.npy --labels $(LAT_LABELS) --label-dropout 0.1 \
	  --arch dit --patch 1 $(LAT_FLOW_FLAGS) --steps $(LAT_FLOW_STEPS) --batch $(LAT_FLOW_BATCH) \
	  --lr $(LAT_FLOW_LR) --decay cosine --seed $(LAT_SEED) --objective $* \
	  --log $(DIS)/latent/$*-data.log.jsonl --log-every 50 -q -o $@

# $(2): the sampler's guidance flag.
define dis_latent_student
$(DIS)/latent/$(1)-%.latent.npy: $(DIS)/latent/noise.npy $(DIS)/latent/labels.npy $(DIS)/latent/$(1).safetensors
	sample-fewstep $$< --model $(DIS)/latent/$(1).safetensors --labels $(DIS)/latent/labels.npy \
	  --steps $$* --seed $(DIS_SEED) $(2) -q -o $$@
endef
$(foreach m,$(DIS_METHODS),$(eval $(call dis_latent_student,$(m),)))
$(foreach o,$(DIS_SCRATCH),$(eval $(call dis_latent_student,$(o)-data,--guidance $$(LAT_GUIDANCE))))

$(DIS)/latent/%.images.npy: $(DIS)/latent/%.latent.npy $(DIS_LAT_VAE)
	decode-vae $< --model $(DIS_LAT_VAE) -q -o $@

$(DIS)/latent/%.eval.json: $(DIS)/latent/%.images.npy $(DIS)/latent/labels.npy $(DIS_LAT_CLS) $(DIS_LAT_REF)
	evaluate $< --labels $(DIS)/latent/labels.npy --classifier $(DIS_LAT_CLS) \
	  --reference $(DIS_LAT_REF) -q -o $@

.SECONDARY: $(foreach m,$(DIS_MODELS),$(DIS)/latent/$(m).safetensors) \
            $(foreach r,$(DIS_LAT_RUNS),$(DIS)/latent/$(r).latent.npy $(DIS)/latent/$(r).images.npy $(DIS)/latent/$(r).eval.json)

# The first "value" after a key of an evaluate report.
dis_val = awk '/"$(1)"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(2)

$(DIS)/table-latent.json: $(foreach r,$(DIS_LAT_RUNS),$(DIS)/latent/$(r).eval.json)
	{ echo '{"metrics": "classifier-FID against $(DIS_LAT_REF) (lower is better) and guided accuracy (higher is better), CFG w = $(LAT_GUIDANCE)",'; \
	  echo ' "teacher": "$(DIS_LAT_FLOW) (Euler)", "classifier": "$(DIS_LAT_CLS)", "rows": ['; sep=''; \
	  for r in $(DIS_LAT_RUNS); do \
	    f=$(DIS)/latent/$$r.eval.json; \
	    printf '%s  {"model": "%s", "steps": %s, "nfe": %s, "classifier_fid": %s, "guided_accuracy": %s}' "$$sep" \
	      "$${r%-*}" "$${r##*-}" "$${r##*-}" "$$($(call dis_val,classifier_fid,$$f))" "$$($(call dis_val,guided_accuracy,$$f))"; \
	    sep=$$',\n'; \
	  done; printf '\n]}\n'; } > $@.tmp && mv $@.tmp $@
	{ printf '%-18s %6s %16s %16s\n' model NFE classifier_fid guided_accuracy; \
	  for r in $(DIS_LAT_RUNS); do f=$(DIS)/latent/$$r.eval.json; \
	    printf '%-18s %6s %16s %16s\n' "$${r%-*}" "$${r##*-}" "$$($(call dis_val,classifier_fid,$$f))" "$$($(call dis_val,guided_accuracy,$$f))"; \
	  done; } > $(DIS)/table-latent.txt
	@cat $(DIS)/table-latent.txt

# The tables as plots: quality against the network evaluations per sample, a line per model.
$(DIS)/nfe-2d.png: $(DIS)/table-2d.json $(TOOLS)
	$(call dis_rows,$<,$(DIS)/table-2d.jsonl)
	render-plot $(DIS)/table-2d.jsonl --x nfe --y energy_distance --series model --log-x --log-y \
	  --y-labels "energy distance to the target" --x-label "network evaluations per sample (NFE)" \
	  --title "Checkerboard: teacher (Euler), students and models from data" -o $@
$(DIS)/nfe-latent.png: $(DIS)/table-latent.json $(TOOLS)
	$(call dis_rows,$<,$(DIS)/table-latent.jsonl)
	render-plot $(DIS)/table-latent.jsonl --x nfe --y classifier_fid,guided_accuracy --series model --log-x \
	  --y-labels "classifier-FID;guided accuracy" --x-label "network evaluations per sample (NFE)" \
	  --title "Latent DiT, CFG w = $(LAT_GUIDANCE): quality against NFE, teacher and students" -o $@

DIS_LAT_GRID := teacher-1 teacher-4 teacher-32 $(foreach m,$(DIS_MODELS),$(foreach k,$(DIS_STUDENT_NFE),$(m)-$(k)))
$(DIS)/grids-latent.png: $(foreach r,$(DIS_LAT_GRID),$(DIS)/latent/$(r).images.npy)
	render-grid $^ --cols $(DIS_LAT_PER_CLASS) --range -1,1 --panel-cols 3 \
	  --titles "$(call dis_titles,$(DIS_LAT_GRID))" \
	  --title "Latent DiT, CFG w = $(LAT_GUIDANCE): teacher (Euler) and students, a row per class" -o $@
