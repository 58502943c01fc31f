# Couplings (issue 28): what minibatch optimal-transport pairs (fit-velocity --coupling ot,
# flowpipe::train::coupling) buy over independent ones, through the tools only.
#   make couplings   out/couplings/couplings.jsonl and out/couplings/couplings.png
# The same 2D MLP velocity model (CondOT path, N(0, I) source) is trained on the checkerboard and
# on 8 Gaussians with each coupling, sampled by Euler at 1, 2, 4, 8 and 32 steps from the same
# noise, and compared with held-out data by the energy distance. Each model's straightness (Liu
# et al. 2022, S = int E|(X_1 - X_0) - u_t(X_t)|^2 dt per coordinate, 0 for straight paths;
# flowpipe::solvers) is measured on its Heun paths from the same noise, CPL_STRAIGHT_STEPS steps,
# by simulate-sde's log. Each row of the table:
# {"data", "coupling", "steps", "energy_distance", "straightness", "series"} (straightness is the
# model's, the same at every step count, null for the floor); the rows of coupling "floor" hold
# the energy distance of fresh data against the same held-out set (what sampling error is left
# once the samples are perfect), repeated at every step count; the figure's axes are logarithmic,
# so a floor <= 0 (the estimator is unbiased) is left out of it. SMALL=1 shrinks every size.
# Measured (AMD EPYC, 2 cores, 2026-12-07, debug-profile tools): 5 min 22 s wall; with the
# straightness runs, 15 min 54 s on cores shared with other builds (not comparable); the table
# is in the README ("Couplings").

CPL := $(OUT)/couplings
CPL_SEED := 28
CPL_DATA := checkerboard 8gaussians
CPL_COUPLINGS := independent ot
CPL_EULER := 1 2 4 8 32
ifeq ($(SMALL),)
CPL_N := 20000
CPL_TRAIN_STEPS := 2000
CPL_BATCH := 256
CPL_HIDDEN := 256,256,256
CPL_SAMPLES := 2000
CPL_STRAIGHT_STEPS := 100
else
CPL_N := 400
CPL_TRAIN_STEPS := 20
CPL_BATCH := 64
CPL_HIDDEN := 32,32
CPL_SAMPLES := 200
CPL_STRAIGHT_STEPS := 10
endif
CPL_FIT := --path condot --steps $(CPL_TRAIN_STEPS) --batch $(CPL_BATCH) --lr 1e-3 --decay cosine \
  --ema 0.999 --hidden $(CPL_HIDDEN) --seed $(CPL_SEED) -q
CPL_RUNS := $(foreach d,$(CPL_DATA),$(foreach c,$(CPL_COUPLINGS),$(foreach s,$(CPL_EULER),$(d)-$(c)-$(s))))

.PHONY: couplings
couplings: $(CPL)/couplings.jsonl $(CPL)/couplings.png
	@echo "couplings: table and figure in $(CPL)/"

$(CPL)/.dir:
	@mkdir -p $(@D) && touch $@

# ---- data: training sets, held-out references, fresh data for the floor, the sampler's noise ----
$(CPL)/%.train.npy: $(TOOLS) | $(CPL)/.dir
	sample-data $* -n $(CPL_N) --seed $(CPL_SEED) -o $@
$(CPL)/%.ref.npy: $(TOOLS) | $(CPL)/.dir
	sample-data $* -n $(CPL_SAMPLES) --seed 128 -o $@
$(CPL)/%.fresh.npy: $(TOOLS) | $(CPL)/.dir
	sample-data $* -n $(CPL_SAMPLES) --seed 129 -o $@
$(CPL)/noise.npy: $(TOOLS) | $(CPL)/.dir
	sample-noise -n $(CPL_SAMPLES) --shape 2 --seed 130 -o $@

# ---- one model per data set and coupling, then Euler samples at each step count ----
define cpl_model
$(CPL)/$(1)-$(2).safetensors: $(CPL)/$(1).train.npy
	fit-velocity --data $$< --coupling $(2) $(CPL_FIT) --log $(CPL)/$(1)-$(2).log.jsonl -o $$@
$(CPL)/$(1)-$(2).straight.json: $(CPL)/$(1)-$(2).safetensors $(CPL)/noise.npy
	simulate-sde -q $(CPL)/noise.npy --field $$< --solver heun --steps $(CPL_STRAIGHT_STEPS) \
	  --log $$@ -o $(CPL)/$(1)-$(2).heun.npy
endef
$(foreach d,$(CPL_DATA),$(foreach c,$(CPL_COUPLINGS),$(eval $(call cpl_model,$(d),$(c)))))

define cpl_run
$(CPL)/$(1)-$(2)-$(3).npy: $(CPL)/$(1)-$(2).safetensors $(CPL)/noise.npy
	simulate-sde -q $(CPL)/noise.npy --field $$< --solver euler --steps $(3) -o $$@
$(CPL)/$(1)-$(2)-$(3).eval.json: $(CPL)/$(1)-$(2)-$(3).npy $(CPL)/$(1).ref.npy
	evaluate $$< --reference $(CPL)/$(1).ref.npy -q -o $$@
endef
$(foreach d,$(CPL_DATA),$(foreach c,$(CPL_COUPLINGS),$(foreach s,$(CPL_EULER),$(eval $(call cpl_run,$(d),$(c),$(s))))))

$(CPL)/%.floor.json: $(CPL)/%.fresh.npy $(CPL)/%.ref.npy
	evaluate $< --reference $(CPL)/$*.ref.npy -q -o $@

.SECONDARY: $(foreach r,$(CPL_RUNS),$(CPL)/$(r).npy $(CPL)/$(r).eval.json) \
            $(foreach d,$(CPL_DATA),$(foreach c,$(CPL_COUPLINGS),$(CPL)/$(d)-$(c).safetensors \
              $(CPL)/$(d)-$(c).straight.json))

# The energy distance of one evaluate report (the first "value" after "energy_distance").
cpl_ed = awk '/"energy_distance"/ { f = 1 } f && /"value"/ { gsub(/[ ,]/, ""); split($$0, a, ":"); print a[2]; exit }' $(1)

# The straightness of one simulate-sde log line (null where not measured).
cpl_straight = sed -n 's/.*"straightness":\([^,}]*\).*/\1/p' $(1)

$(CPL)/couplings.jsonl: $(foreach r,$(CPL_RUNS),$(CPL)/$(r).eval.json) \
                        $(foreach d,$(CPL_DATA),$(CPL)/$(d).floor.json) \
                        $(foreach d,$(CPL_DATA),$(foreach c,$(CPL_COUPLINGS),$(CPL)/$(d)-$(c).straight.json))
	{ for d in $(CPL_DATA); do \
	    for c in $(CPL_COUPLINGS) floor; do \
	      for s in $(CPL_EULER); do \
	        if [ $$c = floor ]; then f=$(CPL)/$$d.floor.json; st=null; \
	        else f=$(CPL)/$$d-$$c-$$s.eval.json; st=$$($(call cpl_straight,$(CPL)/$$d-$$c.straight.json)); fi; \
	        printf '{"data": "%s", "coupling": "%s", "steps": %s, "energy_distance": %s, "straightness": %s, "series": "%s %s"}\n' \
	          $$d $$c $$s "$$($(call cpl_ed,$$f))" "$$st" $$d $$c; \
	      done; \
	    done; \
	  done; } > $@.tmp && mv $@.tmp $@

$(CPL)/couplings.png: $(CPL)/couplings.jsonl $(TOOLS)
	render-plot $< --x steps --y energy_distance --series series --log-x --log-y \
	  --y-labels "energy distance to held-out data" --x-label "Euler steps (NFE)" \
	  --title "Couplings: energy distance against Euler steps" -o $@
