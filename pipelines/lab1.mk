# Lab 1: simulating ODEs and SDEs (notes section 2), through the tools only.
#   make lab1        the figures, out/lab1/*.png (drawn by render-grid)
#   make lab1-data   every simulation and density grid behind them, out/lab1/*.npy
# Brownian motion and its end points; OU paths for theta = 0.25 and four sigmas; the 3x3 grid
# sigma x D = sigma^2/(2 theta) with time rescaled by sigma^2; Langevin dynamics towards the
# course's 5-mode mixture, as snapshots over the target's density and as kernel density
# estimates of the particles (langevin.png, two rows). SMALL=1 shrinks every size.
# Rules with two targets in a pattern rule make both files in one run (trajectory and X_1).

L1 := $(OUT)/lab1
LAB1_SEED := 1
# The target of the Langevin part: GaussianMixture.random_2D(nmodes=5, std=0.75, scale=15, seed=3).
L1_TARGET := random_2d:nmodes=5,std=0.75,scale=15,seed=3
L1_BOUNDS := -15,15,-15,15

ifeq ($(SMALL),)
L1_BM_N := 1000
L1_BM_STEPS := 500
L1_OU_N := 10
L1_OU_STEPS := 1000
L1_GRID_N := 20
L1_GRID_STEPS := 1000
L1_LANG_N := 1000
L1_LANG_STEPS := 1000
L1_LANG_SAVE := 10
L1_RES := 200
else
L1_BM_N := 50
L1_BM_STEPS := 50
L1_OU_N := 4
L1_OU_STEPS := 100
L1_GRID_N := 5
L1_GRID_STEPS := 100
L1_LANG_N := 100
L1_LANG_STEPS := 100
L1_LANG_SAVE := 10
L1_RES := 40
endif

L1_EMPTY :=
L1_SPACE := $(L1_EMPTY) $(L1_EMPTY)
L1_OU_SIGMAS := 0 0.25 0.5 1
L1_GRID_SIGMAS := 1 2 10
L1_GRID_DS := 0.25 1 4
# Row-major over D (rows) then sigma (columns), as the course draws them.
L1_GRID_RUNS := $(foreach d,$(L1_GRID_DS),$(foreach s,$(L1_GRID_SIGMAS),s$(s)_d$(d)))
L1_GRID_TITLES := $(subst $(L1_SPACE),;,$(strip $(foreach d,$(L1_GRID_DS),\
	$(foreach s,$(L1_GRID_SIGMAS),sigma=$(s),D=$(d)))))

L1_DATA := $(L1)/brownian.traj.npy $(L1)/brownian.x1.npy \
	$(foreach s,$(L1_OU_SIGMAS),$(L1)/ou-sigma$(s).traj.npy) \
	$(foreach r,$(L1_GRID_RUNS),$(L1)/ou-grid-$(r).traj.npy) \
	$(L1)/langevin-x0.npy $(L1)/langevin.traj.npy $(L1)/langevin.x1.npy \
	$(L1)/target-density.npy $(L1)/target-samples.npy
L1_FIGURES := $(L1)/brownian.png $(L1)/ou.png $(L1)/ou-grid.png $(L1)/langevin.png $(L1)/target.png

.PHONY: lab1 lab1-data
lab1: $(L1_FIGURES)
lab1-data: $(L1_DATA)

$(L1):
	mkdir -p $@

# Brownian motion W_t (sigma = 1) from 0, t in [0, 5]: Var(W_t) = t.
$(L1)/brownian.traj.npy $(L1)/brownian.x1.npy: $(TOOLS) | $(L1)
	simulate-sde -q --x0 zeros:n=$(L1_BM_N),dim=1 --field brownian:sigma=1 --t1 5 \
		--steps $(L1_BM_STEPS) --seed $(LAB1_SEED) \
		--trajectory $(L1)/brownian.traj.npy -o $(L1)/brownian.x1.npy

# OU dX = -0.25 X dt + sigma dW from x0 evenly spaced in [-10, 10], t in [0, 20].
$(L1)/ou-sigma%.traj.npy $(L1)/ou-sigma%.x1.npy: $(TOOLS) | $(L1)
	simulate-sde -q --x0 linspace:n=$(L1_OU_N),from=-10,to=10 --field ou:theta=0.25,sigma=$* \
		--t1 20 --steps $(L1_OU_STEPS) --seed $(LAB1_SEED) \
		--trajectory $(L1)/ou-sigma$*.traj.npy -o $(L1)/ou-sigma$*.x1.npy

# OU with sigma and D = sigma^2/(2 theta) from the stem s<sigma>_d<D>: theta = sigma^2/(2 D),
# t in [0, 10/sigma^2], so every column of a row shows the same process in time sigma^2 t.
$(L1)/ou-grid-%.traj.npy $(L1)/ou-grid-%.x1.npy: $(TOOLS) | $(L1)
	s=$(patsubst s%,%,$(word 1,$(subst _, ,$*))); d=$(patsubst d%,%,$(word 2,$(subst _, ,$*))); \
	theta=$$(awk -v s=$$s -v d=$$d 'BEGIN { print s * s / (2 * d) }'); \
	t1=$$(awk -v s=$$s 'BEGIN { print 10 / (s * s) }'); \
	simulate-sde -q --x0 linspace:n=$(L1_GRID_N),from=-20,to=20 --field ou:theta=$$theta,sigma=$$s \
		--t1 $$t1 --steps $(L1_GRID_STEPS) --seed $(LAB1_SEED) \
		--trajectory $(L1)/ou-grid-$*.traj.npy -o $(L1)/ou-grid-$*.x1.npy

# Langevin dynamics dX = (sigma^2/2) grad log p(X) dt + sigma dW, sigma = 0.6, from N(0, 20 I).
$(L1)/langevin-x0.npy: $(TOOLS) | $(L1)
	sample-noise -n $(L1_LANG_N) --shape 2 --std 4.47213595 --seed $(LAB1_SEED) -o $@

$(L1)/langevin.traj.npy $(L1)/langevin.x1.npy: $(L1)/langevin-x0.npy $(TOOLS)
	simulate-sde -q $< --field langevin:sigma=0.6 --density $(L1_TARGET) --t1 5 \
		--steps $(L1_LANG_STEPS) --save-every $(L1_LANG_SAVE) --seed $(LAB1_SEED) \
		--trajectory $(L1)/langevin.traj.npy -o $(L1)/langevin.x1.npy

# The target's density p on a grid (row 0 at the top), and samples of it.
$(L1)/target-density.npy: $(TOOLS) | $(L1)
	density grid -d $(L1_TARGET) --bounds $(L1_BOUNDS) --resolution $(L1_RES) --exp -o $@

$(L1)/target-samples.npy: $(TOOLS) | $(L1)
	density sample -d $(L1_TARGET) -n $(L1_LANG_N) --seed $(LAB1_SEED) -o $@

# Figures, drawn by render-grid.
$(L1)/brownian-paths.png: $(L1)/brownian.traj.npy $(TOOLS)
	render-grid $< --kind traj --t0 0 --t1 5 --max-lines 20 --title "Brownian motion, sigma = 1" -o $@

$(L1)/brownian-hist.png: $(L1)/brownian.x1.npy $(TOOLS)
	render-grid $< --kind hist1d --bins 50 --title "W_5 over $(L1_BM_N) paths (variance 5)" -o $@

$(L1)/brownian.png: $(L1)/brownian-paths.png $(L1)/brownian-hist.png $(TOOLS)
	render-grid $(filter-out $(TOOLS),$^) --panel-cols 2 -o $@

$(L1)/ou.png: $(foreach s,$(L1_OU_SIGMAS),$(L1)/ou-sigma$(s).traj.npy) $(TOOLS)
	render-grid $(filter-out $(TOOLS),$^) --kind traj --t0 0 --t1 20 --panel-cols 4 \
		--titles "$(subst $(L1_SPACE),;,$(foreach s,$(L1_OU_SIGMAS),sigma=$(s)))" \
		--title "OU processes, theta = 0.25" -o $@

$(L1)/ou-grid.png: $(foreach r,$(L1_GRID_RUNS),$(L1)/ou-grid-$(r).traj.npy) $(TOOLS)
	render-grid $(filter-out $(TOOLS),$^) --kind traj --t0 0 --t1 10 --panel-cols 3 \
		--titles "$(L1_GRID_TITLES)" --title "OU with D = sigma^2/(2 theta); time axis sigma^2 t" -o $@

# Langevin as the lab draws it: the particles over the target's density, and below them a
# kernel density estimate of the particles at the same times.
$(L1)/langevin-particles.png: $(L1)/langevin.traj.npy $(L1)/target-density.npy $(TOOLS)
	render-grid $< --snapshots 6 --t1 5 --background $(L1)/target-density.npy --bounds $(L1_BOUNDS) \
		--title "Particles over the target density" -o $@

$(L1)/langevin-kde.png: $(L1)/langevin.traj.npy $(TOOLS)
	render-grid $< --snapshots 6 --t1 5 --kind kde --bounds $(L1_BOUNDS) \
		--title "Kernel density estimate of the particles" -o $@

$(L1)/langevin.png: $(L1)/langevin-particles.png $(L1)/langevin-kde.png $(TOOLS)
	render-grid $(filter-out $(TOOLS),$^) --panel-cols 1 \
		--title "Langevin dynamics towards the 5-mode mixture, sigma = 0.6, t from 0 to 5" -o $@

$(L1)/target.png: $(L1)/target-samples.npy $(L1)/target-density.npy $(TOOLS)
	render-grid $< --kind scatter --background $(L1)/target-density.npy --bounds $(L1_BOUNDS) \
		--title "Target: random_2D(5 modes, std 0.75, scale 15, seed 3)" -o $@
