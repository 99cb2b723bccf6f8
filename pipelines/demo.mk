# demo.mk — the README's main job on the embedded default: no downloads, seconds on 2 cores.
# For now it packs the NIfTI images shipped in tests/data into a tensor stream with lm-cat,
# checks the stream record by record, and describes it and a NIfTI file with lm-info.
# Later issues put lm-synth, lm-preprocess, the network, lm-warp and lm-metrics here.
#   make demo                      (from the top level)
#   make -f pipelines/demo.mk OUT=/tmp/demo
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:

BUILD ?= build
BIN   := $(BUILD)/bin
OUT   ?= $(BUILD)/demo
DATA  := tests/data

.PHONY: all
all: $(OUT)/pair.lmt
	@echo "== lm-info: a NIfTI-2 file written by nibabel (scaled int16, oblique affine)"
	$(BIN)/lm-info $(DATA)/nifti2_small.nii.gz
	@echo "== lm-info: the stream made from it (2 records)"
	$(BIN)/lm-info $<
	@echo "== lm-cat checks every record; lm-info --json for scripts"
	$(BIN)/lm-cat $< | $(BIN)/lm-info --json --tensor fixed -

# Two records: an image pair with a label map, and the same pair under another id.
$(OUT)/pair.lmt: $(DATA)/nifti2_small.nii.gz $(BIN)/lm-cat | $(OUT)
	$(BIN)/lm-cat --new -a moving=$(DATA)/nifti2_small.nii.gz -a fixed=$(DATA)/nifti2_small.nii.gz \
	    -m pair=demo1 -m modality_moving=mr -m modality_fixed=ct -o $(OUT)/one.lmt
	$(BIN)/lm-cat $(OUT)/one.lmt | $(BIN)/lm-cat -m pair=demo2 >$(OUT)/two.lmt
	cat $(OUT)/one.lmt $(OUT)/two.lmt >$@

$(OUT):
	mkdir -p $@
