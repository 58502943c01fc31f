# Lab 2: flow matching and score matching in 2D (notes sections 3-4), through the tools only.
#   make lab2   figures out/lab2/*.png and out/lab2/metrics.json (evaluate's figures per model)
# Parts: the ground-truth conditional path, and the conditional ODE and SDE towards one z
# beside it (conditional-ode.png, conditional-sde.png); flow matching on symmetric_2D(5 modes, std 1,
# scale 10) with the sqrt(1 - t) path (samples, trajectories); score matching and the SDE
# sampler with sigma = 2 (Theorem 17); the learned score against the score derived from the
# velocity (quiver grids at four times); Gaussian -> checkerboard(4) with CondOT, beside the
# ground truth; the linear interpolant between circles and checkerboard(4) (linear-path.png)
# and the flow learned on it (bridge.png). SMALL=1 shrinks every size.

L2 := $(OUT)/lab2
LAB2_SEED := 2
L2_MIX := symmetric_2d:nmodes=5,std=1,scale=10
L2_BOUNDS := -15,15,-15,15
L2_CB_BOUNDS := -6,6,-6,6

# Each model: an MLP 4 x 256 for 5,000 steps at batch 1,024 with a cosine decay and an EMA of
# the weights (about a minute on 2 cores). Measured (AMD EPYC, 2 cores, 2026-12-07): `make lab2`
# 281 s wall, 551 s CPU; energy distance / sliced W2 against 2,000 held-out samples (two
# checkerboard samples of 2,000 score -0.003 / 0.082): Gaussian -> checkerboard 0.0016 / 0.162,
# circles -> checkerboard -0.002 / 0.112, flow matching on the mixture 0.0069 / 0.805, its SDE
# 0.0063 / 0.794; the 4 x 64, 3,000-step MLPs before: 0.0054 / 0.201, 0.0062 / 0.206,
# 0.0194 / 0.945, 0.0034 / 0.770, in 19-22 s.
ifeq ($(SMALL),)
L2_N := 20000
L2_STEPS := 5000
L2_HIDDEN := 256,256,256,256
L2_SAMPLES := 2000
L2_SIM_STEPS := 200
else
L2_N := 500
L2_STEPS := 30
L2_HIDDEN := 64,64
L2_SAMPLES := 200
L2_SIM_STEPS := 20
endif
L2_FIT := --steps $(L2_STEPS) --batch 1024 --lr 1e-3 --decay cosine --ema 0.999 --hidden $(L2_HIDDEN) -q

# The four trained models; each one's loss curve is drawn beside it.
L2_MODELS := fm-mixture sm-mixture fm-checkerboard bridge

.PHONY: lab2
lab2: $(L2)/paths.png $(L2)/conditional-ode.png $(L2)/conditional-sde.png \
      $(L2)/fm-mixture.png $(L2)/sm-mixture.png $(L2)/fm-mixture-panels.png \
      $(L2)/sm-mixture-panels.png $(L2)/scores.png \
      $(L2)/checkerboard.png $(L2)/linear-path.png $(L2)/bridge.png $(L2)/metrics.json \
      $(L2)/likelihood.json $(foreach m,$(L2_MODELS),$(L2)/$(m)-loss.png)
	@echo "lab2: figures, loss curves (*-loss.png) and metrics.json in $(L2)/"

$(L2)/%-loss.png: $(L2)/%.safetensors $(TOOLS)
	render-plot $(L2)/$*.log.jsonl --y loss --log-y --smooth 5 --labels $* \
	  --title "Lab 2, $*: training loss against the step" -o $@

$(L2)/.dir:
	@mkdir -p $(@D) && touch $@

# ---- data ----
$(L2)/mixture.npy: $(TOOLS) | $(L2)/.dir
	sample-data $(L2_MIX) -n $(L2_N) --seed $(LAB2_SEED) -o $@
$(L2)/mixture-ref.npy: $(TOOLS) | $(L2)/.dir
	sample-data $(L2_MIX) -n $(L2_SAMPLES) --seed 102 -o $@
$(L2)/checkerboard.npy: $(TOOLS) | $(L2)/.dir
	sample-data checkerboard:grid=4 -n $(L2_N) --seed $(LAB2_SEED) -o $@
$(L2)/checkerboard-ref.npy: $(TOOLS) | $(L2)/.dir
	sample-data checkerboard:grid=4 -n $(L2_SAMPLES) --seed 103 -o $@
$(L2)/circles.npy: $(TOOLS) | $(L2)/.dir
	sample-data circles -n $(L2_N) --seed $(LAB2_SEED) -o $@
$(L2)/circles-x0.npy: $(TOOLS) | $(L2)/.dir
	sample-data circles -n $(L2_SAMPLES) --seed 104 -o $@
$(L2)/noise.npy: $(TOOLS) | $(L2)/.dir
	sample-noise -n $(L2_SAMPLES) --shape 2 --seed 105 -o $@

# ---- the ground-truth conditional and marginal paths, x_t = alpha_t z + beta_t eps (sqrt path) ----
# Conditional: one z = (6, 6) (300 copies, from a Gaussian of std 1e-6); marginal: z ~ p_data.
L2_TIMES := 0 0.25 0.5 0.75 1
$(L2)/z-fixed.npy: $(TOOLS) | $(L2)/.dir
	density sample -d 'gaussian:mean=6;6,std=1e-6' -n 300 --seed 106 -o $@
$(L2)/conditional-%.npy: $(L2)/z-fixed.npy
	sample-path $< --times $* --path sqrt --seed 107 -o $@
$(L2)/marginal-%.npy: $(L2)/mixture-ref.npy
	sample-path $< --times $* --path sqrt --seed 108 -o $@
$(L2)/paths.png: $(foreach t,$(L2_TIMES),$(L2)/conditional-$(t).npy $(L2)/marginal-$(t).npy)
	render-grid $(foreach t,$(L2_TIMES),$(L2)/conditional-$(t).npy) --bounds $(L2_BOUNDS) \
	  --titles "$(subst $(L1_SPACE),;,$(foreach t,$(L2_TIMES),t=$(t)))" \
	  --title "Conditional path p_t(x|z), z = (6, 6), sqrt path" -o $(L2)/paths-conditional.png
	render-grid $(foreach t,$(L2_TIMES),$(L2)/marginal-$(t).npy) --bounds $(L2_BOUNDS) \
	  --titles "$(subst $(L1_SPACE),;,$(foreach t,$(L2_TIMES),t=$(t)))" \
	  --title "Marginal path p_t(x) of symmetric_2D(5, 1, 10), sqrt path" -o $(L2)/paths-marginal.png
	render-grid $(L2)/paths-conditional.png $(L2)/paths-marginal.png --panel-cols 1 -o $@

# ---- flow matching on the mixture, sqrt path ----
$(L2)/fm-mixture.safetensors: $(L2)/mixture.npy
	fit-velocity --data $< --path sqrt $(L2_FIT) --seed $(LAB2_SEED) --log $(L2)/fm-mixture.log.jsonl -o $@
$(L2)/fm-mixture.x1.npy: $(L2)/fm-mixture.safetensors $(L2)/noise.npy
	simulate-sde -q $(L2)/noise.npy --field $< --solver heun --steps $(L2_SIM_STEPS) \
	  --save-every $$(( $(L2_SIM_STEPS) / 4 )) --trajectory $(L2)/fm-mixture.traj.npy -o $@
$(L2)/fm-mixture.traj.npy: $(L2)/fm-mixture.x1.npy
	@test -f $@
$(L2)/fm-mixture.png: $(L2)/fm-mixture.x1.npy $(L2)/mixture-ref.npy
	render-grid $(L2)/mixture-ref.npy $< --bounds $(L2_BOUNDS) --panel-cols 2 \
	  --titles "data;flow matching (ODE, Heun)" -o $@

# ---- score matching (noise form) and the SDE sampler, sigma = 2 ----
$(L2)/sm-mixture.safetensors: $(L2)/mixture.npy
	fit-score --data $< --path sqrt --param noise $(L2_FIT) --seed $(LAB2_SEED) --log $(L2)/sm-mixture.log.jsonl -o $@
$(L2)/sm-mixture.x1.npy: $(L2)/fm-mixture.safetensors $(L2)/sm-mixture.safetensors $(L2)/noise.npy
	simulate-sde -q $(L2)/noise.npy --field learned:model=$<,score=$(L2)/sm-mixture.safetensors,sigma=2 \
	  --steps $(L2_SIM_STEPS) --seed $(LAB2_SEED) \
	  --save-every $$(( $(L2_SIM_STEPS) / 4 )) --trajectory $(L2)/sm-mixture.traj.npy -o $@
$(L2)/sm-mixture.png: $(L2)/sm-mixture.x1.npy $(L2)/mixture-ref.npy
	render-grid $(L2)/mixture-ref.npy $< --bounds $(L2_BOUNDS) --panel-cols 2 \
	  --titles "data;SDE sampler, sigma = 2, learned score" -o $@

# The learned marginal flow as the lab shows it: the ground-truth marginal path at t = 0, .25,
# .5, .75, 1 over the learned sampler's states at the same times, and its trajectories (the ODE
# for flow matching, the SDE for score matching).
$(L2)/%-mixture-panels.png: $(L2)/%-mixture.x1.npy $(L2)/paths.png
	render-grid $(L2)/$*-mixture.traj.npy --snapshots 5 --bounds $(L2_BOUNDS) \
	  --title "$(if $(filter fm,$*),flow matching: the learned ODE,score matching: the SDE with sigma = 2) at the same times" \
	  -o $(L2)/$*-mixture-snapshots.png
	render-grid $(L2)/$*-mixture.traj.npy --kind traj --bounds $(L2_BOUNDS) --max-lines 100 --size 500x500 \
	  --title "its trajectories" -o $(L2)/$*-mixture-lines.png
	render-grid $(L2)/paths-marginal.png $(L2)/$*-mixture-snapshots.png $(L2)/$*-mixture-lines.png \
	  --panel-cols 1 -o $@

# ---- learned score versus the score derived from the velocity, at four times ----
L2_SCORE_TIMES := 0.2 0.4 0.6 0.8
L2_SCORES := $(foreach t,$(L2_SCORE_TIMES),$(L2)/score-learned-t$(t).npy) \
             $(foreach t,$(L2_SCORE_TIMES),$(L2)/score-from-velocity-t$(t).npy)
.SECONDARY: $(L2_SCORES)
$(L2)/score-learned-t%.npy: $(L2)/sm-mixture.safetensors
	eval-field --model $< --what score --t $* --grid $(L2_BOUNDS) --resolution 20 --with-points -o $@
$(L2)/score-from-velocity-t%.npy: $(L2)/fm-mixture.safetensors
	eval-field --model $< --what score --t $* --grid $(L2_BOUNDS) --resolution 20 --with-points -o $@
$(L2)/scores.png: $(L2_SCORES)
	render-grid $^ --kind quiver --bounds $(L2_BOUNDS) --panel-cols 4 --size 400x400 \
	  --titles "$(subst _, ,$(subst $(L1_SPACE),;,$(foreach t,$(L2_SCORE_TIMES),learned_score,_t_=_$(t)) $(foreach t,$(L2_SCORE_TIMES),from_the_velocity,_t_=_$(t))))" \
	  --title "Score matching (top) against the score derived from the flow matching velocity (bottom)" -o $@

# ---- the conditional vector field and the conditional SDE towards z = (6, 6) (lab part 2) ----
# The exact field of the path towards a point mass at z (gaussian-target with std 1e-4), from
# 300 N(0, I) samples: the ODE, and the SDE with sigma = 1 (Theorem 17 with the conditional
# score); their states at the path's times under the ground truth's, and their trajectories.
L2_COND := gaussian-target:mean=6;6,std=1e-4,path=sqrt
$(L2)/cond-x0.npy: $(TOOLS) | $(L2)/.dir
	sample-noise -n 300 --shape 2 --seed 109 -o $@
$(L2)/conditional-ode.traj.npy: $(L2)/cond-x0.npy
	simulate-sde -q $< --field '$(L2_COND)' --solver heun --steps $(L2_SIM_STEPS) \
	  --save-every $$(( $(L2_SIM_STEPS) / 20 )) --trajectory $@ -o $(L2)/conditional-ode.x1.npy
$(L2)/conditional-sde.traj.npy: $(L2)/cond-x0.npy
	simulate-sde -q $< --field '$(L2_COND),sigma=1' --steps $(L2_SIM_STEPS) --seed $(LAB2_SEED) \
	  --save-every $$(( $(L2_SIM_STEPS) / 20 )) --trajectory $@ -o $(L2)/conditional-sde.x1.npy
$(L2)/conditional-%.png: $(L2)/conditional-%.traj.npy $(L2)/paths.png
	render-grid $< --snapshots 5 --bounds $(L2_BOUNDS) \
	  --title "$(if $(filter ode,$*),the conditional ODE,the conditional SDE (sigma = 1)): samples at t = 0, .25, .5, .75, 1" \
	  -o $(L2)/conditional-$*-snapshots.png
	render-grid $< --kind traj --bounds $(L2_BOUNDS) --max-lines 50 --size 500x500 \
	  --title "its trajectories" -o $(L2)/conditional-$*-lines.png
	render-grid $(L2)/paths-conditional.png $(L2)/conditional-$*-snapshots.png \
	  $(L2)/conditional-$*-lines.png --panel-cols 1 -o $@

# ---- Gaussian -> checkerboard(4), CondOT ----
$(L2)/fm-checkerboard.safetensors: $(L2)/checkerboard.npy
	fit-velocity --data $< --path condot $(L2_FIT) --seed $(LAB2_SEED) --log $(L2)/fm-checkerboard.log.jsonl -o $@
$(L2)/fm-checkerboard.x1.npy: $(L2)/fm-checkerboard.safetensors $(L2)/noise.npy
	simulate-sde -q $(L2)/noise.npy --field $< --steps $(L2_SIM_STEPS) \
	  --save-every $$(( $(L2_SIM_STEPS) / 4 )) --trajectory $(L2)/fm-checkerboard.traj.npy -o $@
$(L2)/checkerboard.png: $(L2)/fm-checkerboard.x1.npy $(L2)/checkerboard-ref.npy
	render-grid $(L2)/fm-checkerboard.traj.npy --snapshots 5 --bounds $(L2_CB_BOUNDS) \
	  --title "learned: N(0, I) -> checkerboard(4), CondOT (t = 0 .. 1)" -o $(L2)/checkerboard-learned.png
	render-grid $(L2)/checkerboard-ref.npy --bounds $(L2_CB_BOUNDS) \
	  --title "ground truth: checkerboard(4)" -o $(L2)/checkerboard-truth.png
	render-grid $(L2)/checkerboard-truth.png $(L2)/checkerboard-learned.png --panel-cols 2 -o $@

# ---- circles -> checkerboard(4), the linear interpolant between two data sets ----
$(L2)/bridge.safetensors: $(L2)/checkerboard.npy $(L2)/circles.npy
	fit-velocity --data $< --source $(L2)/circles.npy $(L2_FIT) --seed $(LAB2_SEED) --log $(L2)/bridge.log.jsonl -o $@
$(L2)/bridge.x1.npy: $(L2)/bridge.safetensors $(L2)/circles-x0.npy
	simulate-sde -q $(L2)/circles-x0.npy --field $< --steps $(L2_SIM_STEPS) \
	  --save-every $$(( $(L2_SIM_STEPS) / 4 )) --trajectory $(L2)/bridge.traj.npy -o $@
$(L2)/bridge.png: $(L2)/bridge.x1.npy
	render-grid $(L2)/bridge.traj.npy --snapshots 5 --bounds $(L2_CB_BOUNDS) \
	  --title "circles -> checkerboard(4), linear interpolant (t = 0 .. 1)" -o $@

# The interpolant itself, before any training: x_t = (1 - t) x_0 + t z with x_0 from the circles
# and z from the checkerboard, paired by index (the independent coupling), at the path's times.
.SECONDARY: $(foreach t,$(L2_TIMES),$(L2)/linear-path-$(t).npy)
$(L2)/linear-path-%.npy: $(L2)/checkerboard-ref.npy $(L2)/circles-x0.npy
	sample-path $< --path linear-interp --source $(L2)/circles-x0.npy --times $* -o $@
$(L2)/linear-path.png: $(foreach t,$(L2_TIMES),$(L2)/linear-path-$(t).npy)
	render-grid $^ --bounds $(L2_CB_BOUNDS) --size 400x400 \
	  --titles "$(subst $(L1_SPACE),;,$(foreach t,$(L2_TIMES),t=$(t)))" \
	  --title "The linear interpolant from circles (t = 0) to checkerboard(4) (t = 1), independent pairs" -o $@

# ---- evaluate's figures for every sampler, against held-out reference samples ----
$(L2)/metrics.json: $(L2)/fm-mixture.x1.npy $(L2)/sm-mixture.x1.npy $(L2)/fm-checkerboard.x1.npy \
                    $(L2)/bridge.x1.npy $(L2)/mixture-ref.npy $(L2)/checkerboard-ref.npy $(L2)/noise.npy
	{ echo '{'; \
	  echo '"flow_matching_mixture":'; evaluate $(L2)/fm-mixture.x1.npy --reference $(L2)/mixture-ref.npy; echo ','; \
	  echo '"sde_sigma2_mixture":'; evaluate $(L2)/sm-mixture.x1.npy --reference $(L2)/mixture-ref.npy; echo ','; \
	  echo '"noise_vs_mixture_baseline":'; evaluate $(L2)/noise.npy --reference $(L2)/mixture-ref.npy; echo ','; \
	  echo '"gaussian_to_checkerboard":'; evaluate $(L2)/fm-checkerboard.x1.npy --reference $(L2)/checkerboard-ref.npy; echo ','; \
	  echo '"circles_to_checkerboard":'; evaluate $(L2)/bridge.x1.npy --reference $(L2)/checkerboard-ref.npy; echo ','; \
	  echo '"noise_vs_checkerboard_baseline":'; evaluate $(L2)/noise.npy --reference $(L2)/checkerboard-ref.npy; \
	  echo '}'; } > $@.tmp && mv $@.tmp $@

# ---- the test NLL of each model with a Gaussian p_init (the bridge starts from data and has
# no density), by the change of variables along its ODE (likelihood; exact divergence in 2-D):
# nats per point on the held-out points, beside the true density's NLL of the same points (for
# the mixture its entropy's Monte Carlo estimate; the checkerboard is uniform on half of
# [-5, 5]^2, entropy log 50 = 3.912). The gap is KL(p_data || p_model) >= 0.
$(L2)/likelihood.json: $(L2)/fm-mixture.safetensors $(L2)/sm-mixture.safetensors \
                       $(L2)/fm-checkerboard.safetensors $(L2)/mixture-ref.npy $(L2)/checkerboard-ref.npy
	{ echo '{"checkerboard_entropy": 3.912023005428146,'; \
	  echo '"flow_matching_mixture":'; likelihood $(L2)/mixture-ref.npy --model $(L2)/fm-mixture.safetensors --density '$(L2_MIX)' -q; echo ','; \
	  echo '"score_matching_mixture_ode":'; likelihood $(L2)/mixture-ref.npy --model $(L2)/sm-mixture.safetensors --density '$(L2_MIX)' -q; echo ','; \
	  echo '"gaussian_to_checkerboard":'; likelihood $(L2)/checkerboard-ref.npy --model $(L2)/fm-checkerboard.safetensors -q; \
	  echo '}'; } > $@.tmp && mv $@.tmp $@
