# Classifier guidance against classifier-free guidance (issue 27, notes section 5), on the 2D
# three-mode mixture of the 2026 lab 3 sanity check, through the tools only.
#   make guidance    out/guidance/guidance.jsonl (the table) and out/guidance/guidance.png
# One conditional MLP velocity model (cmlp, CondOT path, label dropout 0.2) gives CFG its two
# branches and classifier guidance its base (the null label: the unconditional field); a noisy
# classifier p(y | x_t, t) (fit-noisy-classifier, the same path) gives the gradient. At each scale
# w in GD_WS (w = 0: unguided), GD_EACH samples of every class from the same noise (Heun, 50
# steps): CFG with guide --scale w, classifier guidance with guide --classifier-scale w. Each row
# of the table: {"method" (cfg, classifier or floor), "w", "guided_accuracy" (the fraction of
# samples whose most probable mixture component, by the exact posterior, is the class asked
# for: evaluate --posterior), "energy_distance" (to draws of the class-balanced mixture, the
# target of a set guided to every class equally often), "series"}; the floor rows hold fresh
# class-balanced draws against the same reference. The figure: the samples coloured by the class
# asked for, a row per method, and accuracy and energy distance against w.
# SMALL=1 shrinks every size (seconds; the figures are then noise). The Fashion-MNIST half,
# `make guidance-latent`, is in pipelines/latent.mk (it needs the main job's models).

GD := $(OUT)/guidance
GD_SEED := 27
GD_MIX := {"density": "mixture", "means": [[-3, 0], [3, 0], [0, 4]], "stds": [0.6, 0.6, 0.6], "weights": [0.3, 0.3, 0.4]}
GD_BALANCED := {"density": "mixture", "means": [[-3, 0], [3, 0], [0, 4]], "stds": [0.6, 0.6, 0.6], "weights": [1, 1, 1]}
GD_METHODS := cfg classifier
GD_BOUNDS := -7,7,-5,9
ifeq ($(SMALL),)
GD_WS := 0 1 2 4 8
GD_N := 6000
GD_STEPS := 1500
GD_EACH := 300
else
GD_WS := 0 1 4
GD_N := 300
GD_STEPS := 20
GD_EACH := 20
endif
GD_SAMPLES := $(shell echo $$(( 3 * $(GD_EACH) )))
GD_RUNS := $(foreach m,$(GD_METHODS),$(foreach w,$(GD_WS),$(m)-w$(w)))
gd_empty :=
gd_space := $(gd_empty) $(gd_empty)

.PHONY: guidance
guidance: $(GD)/guidance.jsonl $(GD)/guidance.png
	@echo "guidance: table and figure in $(GD)/"

$(GD)/.dir:
	@mkdir -p $(@D) && touch $@

# ---- data, held-out data, the class-balanced reference and fresh draws of it, the noise ----
$(GD)/data.npy $(GD)/labels.npy &: $(TOOLS) | $(GD)/.dir
	sample-data '$(GD_MIX)' -n $(GD_N) --seed $(GD_SEED) --labels $(GD)/labels.npy -o $(GD)/data.npy
$(GD)/test.npy $(GD)/test-labels.npy &: $(TOOLS) | $(GD)/.dir
	sample-data '$(GD_MIX)' -n 1000 --seed 1 --labels $(GD)/test-labels.npy -o $(GD)/test.npy
$(GD)/ref.npy: $(TOOLS) | $(GD)/.dir
	sample-data '$(GD_BALANCED)' -n $(GD_SAMPLES) --seed 2 -o $@
$(GD)/fresh.npy $(GD)/fresh-labels.npy &: $(TOOLS) | $(GD)/.dir
	sample-data '$(GD_BALANCED)' -n $(GD_SAMPLES) --seed 3 --labels $(GD)/fresh-labels.npy -o $(GD)/fresh.npy
$(GD)/x0.npy: $(TOOLS) | $(GD)/.dir
	sample-noise -n $(GD_SAMPLES) --shape 2 --seed 4 -o $@

# ---- the conditional flow model and the noisy classifier, on the same path ----
$(GD)/flow.safetensors: $(GD)/data.npy $(GD)/labels.npy
	fit-velocity --data $(GD)/data.npy --labels $(GD)/labels.npy --label-dropout 0.2 --path condot \
		--hidden 64,64 --steps $(GD_STEPS) --batch 256 --lr 3e-3 --decay cosine --seed $(GD_SEED) \
		--log $(GD)/flow.log.jsonl -q -o $@
$(GD)/classifier.safetensors: $(GD)/data.npy $(GD)/labels.npy $(GD)/test.npy $(GD)/test-labels.npy
	fit-noisy-classifier --data $(GD)/data.npy --labels $(GD)/labels.npy --path condot \
		--test-data $(GD)/test.npy --test-labels $(GD)/test-labels.npy --hidden 64,64 \
		--steps $(GD_STEPS) --batch 256 --lr 3e-3 --seed $(GD_SEED) \
		--log $(GD)/classifier.log.jsonl -q -o $@

# ---- guided samples: one spec per method and w, each class GD_EACH times, the same noise ----
$(GD)/cfg-w%.field.json: $(GD)/flow.safetensors
	guide --model $< --each $(GD_EACH) --scale $* --labels-out $(GD)/cfg-w$*.labels.npy -o $@
$(GD)/classifier-w%.field.json: $(GD)/flow.safetensors $(GD)/classifier.safetensors
	guide --model $< --classifier $(GD)/classifier.safetensors --classifier-scale $* \
		--each $(GD_EACH) --labels-out $(GD)/classifier-w$*.labels.npy -o $@
$(GD)/%.npy: $(GD)/%.field.json $(GD)/x0.npy
	simulate-sde -q $(GD)/x0.npy --field $< --solver heun --steps 50 -o $@
$(GD)/%.eval.json: $(GD)/%.npy $(GD)/ref.npy
	evaluate $< --reference $(GD)/ref.npy --posterior '$(GD_MIX)' --labels $(GD)/$*.labels.npy -q -o $@
$(GD)/floor.eval.json: $(GD)/fresh.npy $(GD)/ref.npy
	evaluate $< --reference $(GD)/ref.npy --posterior '$(GD_MIX)' --labels $(GD)/fresh-labels.npy -q -o $@

.SECONDARY: $(foreach r,$(GD_RUNS),$(GD)/$(r).field.json $(GD)/$(r).npy $(GD)/$(r).eval.json)

# A number of one evaluate report: guided_accuracy, or the energy distance's value.
gd_acc = awk '/"guided_accuracy"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)
gd_ed = awk '/"energy_distance"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)

$(GD)/guidance.jsonl: $(foreach r,$(GD_RUNS),$(GD)/$(r).eval.json) $(GD)/floor.eval.json
	{ for m in $(GD_METHODS) floor; do \
	    for w in $(GD_WS); do \
	      if [ $$m = floor ]; then f=$(GD)/floor.eval.json; else f=$(GD)/$$m-w$$w.eval.json; fi; \
	      printf '{"method": "%s", "w": %s, "guided_accuracy": %s, "energy_distance": %s, "series": "%s"}\n' \
	        $$m $$w "$$($(call gd_acc,$$f))" "$$($(call gd_ed,$$f))" $$m; \
	    done; \
	  done; } > $@.tmp && mv $@.tmp $@

$(GD)/samples.png: $(foreach r,$(GD_RUNS),$(GD)/$(r).npy) $(TOOLS)
	render-grid $(foreach r,$(GD_RUNS),$(GD)/$(r).npy) --labels $(GD)/cfg-w0.labels.npy \
		--bounds $(GD_BOUNDS) --size 300x300 --alpha 0.5 --panel-cols $(words $(GD_WS)) \
		--titles "$(subst -w, w=,$(subst $(gd_space),;,$(GD_RUNS)))" \
		--title "guided samples, coloured by the class asked for (w = 0: unguided)" -o $@

$(GD)/curves.png: $(GD)/guidance.jsonl $(TOOLS)
	render-plot $< --x w --y guided_accuracy,energy_distance --series series \
		--y-labels "guided accuracy (exact posterior);energy distance to the balanced mixture" \
		--x-label "guidance scale w" --title "CFG and classifier guidance against w" -o $@

$(GD)/guidance.png: $(GD)/samples.png $(GD)/curves.png $(TOOLS)
	render-grid $(GD)/samples.png $(GD)/curves.png --panel-cols 1 \
		--title "Classifier guidance and classifier-free guidance on three Gaussians" -o $@

