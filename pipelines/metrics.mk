# Metrics: the classifier behind `evaluate --classifier` (classifier-FID, KID, guided accuracy).
#   make classifier      $(CLASSIFIER) = $(OUT)/models/classifier.safetensors, a small CNN
#                        trained on Fashion-MNIST (data.mk's 28x28 files); its test accuracy is
#                        in the model's config ("test") and in $(OUT)/models/classifier.jsonl
#   make metrics-floor   $(OUT)/metrics/fashion-floor.json: the real test images against the
#                        training images, the scale any generated set is read against
# Other pipelines evaluate their samples with
#   evaluate SAMPLES --labels ASKED --classifier $(CLASSIFIER) --reference $(FASHION_TRAIN_IMAGES) \
#     --heldout $(FASHION_TEST_IMAGES) --heldout-labels $(FASHION_TEST_LABELS)
# SMALL=1 trains for a few steps (a smoke test: the accuracy means nothing).

CLASSIFIER := $(OUT)/models/classifier.safetensors
CLASSIFIER_SEED := 0
ifeq ($(SMALL),)
CLASSIFIER_STEPS := 1500
KID_SUBSETS := 100
else
CLASSIFIER_STEPS := 20
KID_SUBSETS := 5
endif

.PHONY: classifier metrics-floor
classifier: $(CLASSIFIER) $(OUT)/models/classifier-loss.png
metrics-floor: $(OUT)/metrics/fashion-floor.json

$(CLASSIFIER): $(FASHION_TRAIN_IMAGES) $(FASHION_TRAIN_LABELS) $(FASHION_TEST_IMAGES) $(FASHION_TEST_LABELS) $(TOOLS)
	@mkdir -p $(@D)
	$(call stage_time,classifier/fit-classifier) fit-classifier --data $(FASHION_TRAIN_IMAGES) --labels $(FASHION_TRAIN_LABELS) \
	  --test-data $(FASHION_TEST_IMAGES) --test-labels $(FASHION_TEST_LABELS) \
	  --steps $(CLASSIFIER_STEPS) --seed $(CLASSIFIER_SEED) --log $(@D)/classifier.jsonl -o $@

$(OUT)/models/classifier-loss.png: $(CLASSIFIER)
	render-plot $(@D)/classifier.jsonl --y loss --log-y --smooth 5 --labels classifier \
	  --title "Metrics classifier: cross-entropy against the step" -o $@

$(OUT)/metrics/fashion-floor.json: $(CLASSIFIER) $(TOOLS)
	@mkdir -p $(@D)
	evaluate $(FASHION_TEST_IMAGES) --labels $(FASHION_TEST_LABELS) --classifier $(CLASSIFIER) \
	  --reference $(FASHION_TRAIN_IMAGES) --kid-subsets $(KID_SUBSETS) -o $@
