# Datasets: Fashion-MNIST imported once into .npy for the image labs (import-data).
#
# Images are (N, 1, H, W) f32 in [-1, 1] (black = -1); labels are (N,) i64 in 0..9.
#   FASHION_TRAIN_IMAGES   $(OUT)/data/fashion-train-images.npy   (60000, 1, 28, 28)
#   FASHION_TRAIN_LABELS   $(OUT)/data/fashion-train-labels.npy   (60000,)
#   FASHION_TEST_IMAGES    $(OUT)/data/fashion-test-images.npy    (10000, 1, 28, 28)
#   FASHION_TEST_LABELS    $(OUT)/data/fashion-test-labels.npy    (10000,)
#   FASHION_PAD            side of the padded images below (default 32, the U-Net lab's size)
#   FASHION_TRAIN_IMAGES_PADDED, FASHION_TEST_IMAGES_PADDED
#                          the same images centred in black to FASHION_PAD x FASHION_PAD:
#                          $(OUT)/data/fashion-train-images-pad32.npy (labels are unchanged)
#   $(call fashion_images,SPLIT,PAD)
#                          the file for SPLIT (train|test) at any PAD; an empty PAD is 28x28
#   FLOWPIPE_DATA          an optional folder holding fashion-mnist/ (or the IDX files themselves)
# Targets: `fashion-mnist` makes the four 28x28 files; `fashion-mnist-installed` finds the IDX
# files in $(FLOWPIPE_DATA)/fashion-mnist, $(FLOWPIPE_DATA) or /usr/share/datasets/fashion-mnist
# (where `apt-get install dataset-fashion-mnist` puts them), installs that package when run as
# root with apt-get, and otherwise says what to do and fails. import-data looks in the same places.

FASHION_PAD ?= 32
fashion_images = $(OUT)/data/fashion-$(strip $(1))-images$(if $(strip $(2)),-pad$(strip $(2))).npy
FASHION_TRAIN_IMAGES := $(call fashion_images,train,)
FASHION_TRAIN_LABELS := $(OUT)/data/fashion-train-labels.npy
FASHION_TEST_IMAGES := $(call fashion_images,test,)
FASHION_TEST_LABELS := $(OUT)/data/fashion-test-labels.npy
FASHION_TRAIN_IMAGES_PADDED := $(call fashion_images,train,$(FASHION_PAD))
FASHION_TEST_IMAGES_PADDED := $(call fashion_images,test,$(FASHION_PAD))
# The names of Fashion-MNIST's labels 0-9 (the data set's documentation), for grids' row labels.
FASHION_CLASS_NAMES := T-shirt/top;Trouser;Pullover;Dress;Coat;Sandal;Shirt;Sneaker;Bag;Ankle boot

export FLOWPIPE_DATA
FASHION_DIRS ?= $(if $(FLOWPIPE_DATA),$(FLOWPIPE_DATA)/fashion-mnist $(FLOWPIPE_DATA)) /usr/share/datasets/fashion-mnist
FASHION_HELP := run 'apt-get install dataset-fashion-mnist' as root, or set FLOWPIPE_DATA to a folder \
  holding fashion-mnist/{train,t10k}-images-idx3-ubyte.gz and {train,t10k}-labels-idx1-ubyte.gz

.PHONY: fashion-mnist fashion-mnist-installed
fashion-mnist: $(FASHION_TRAIN_IMAGES) $(FASHION_TRAIN_LABELS) $(FASHION_TEST_IMAGES) $(FASHION_TEST_LABELS)

# Succeeds when some folder holds both splits (gzipped or not); else installs or explains.
fashion-mnist-installed:
	@for d in $(FASHION_DIRS); do \
	  for s in train t10k; do \
	    ls $$d/$$s-images-idx3-ubyte* $$d/$$s-labels-idx1-ubyte* >/dev/null 2>&1 || continue 2; \
	  done; exit 0; \
	done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "fashion-mnist not found in $(FASHION_DIRS): apt-get install -y dataset-fashion-mnist"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y dataset-fashion-mnist \
	    || { apt-get update && apt-get install -y dataset-fashion-mnist; }; } \
	  || { echo "fashion-mnist: apt-get could not install it: $(FASHION_HELP)" >&2; exit 1; }; \
	else \
	  echo "fashion-mnist not found in $(FASHION_DIRS): $(FASHION_HELP)" >&2; exit 1; \
	fi

# One import writes a split's images and labels (a pattern rule with two targets runs once).
$(OUT)/data/fashion-%-images.npy $(OUT)/data/fashion-%-labels.npy: $(TOOLS) | fashion-mnist-installed
	@mkdir -p $(@D)
	import-data --dataset fashion-mnist --split $* -q \
	  -o $(OUT)/data/fashion-$*-images.npy --labels-out $(OUT)/data/fashion-$*-labels.npy

$(OUT)/data/fashion-train-images-pad%.npy: $(TOOLS) | fashion-mnist-installed
	@mkdir -p $(@D)
	import-data --dataset fashion-mnist --split train --pad $* -q -o $@

$(OUT)/data/fashion-test-images-pad%.npy: $(TOOLS) | fashion-mnist-installed
	@mkdir -p $(@D)
	import-data --dataset fashion-mnist --split test --pad $* -q -o $@
