# demo.mk — the README's main job on the embedded default: no downloads, well under a minute on
# 2 cores. lm-synth makes 4 multimodal pairs (MR-like moving, CT-like fixed, label maps, the true
# deformation), lm-preprocess streams them, lm-warp applies the known field, and lm-metrics
# prints Dice/HD95/folding before (identity) and after. The network (lm-encode | lm-leb |
# lm-decode) takes the known field's place in a later issue.
#   make demo                          (from the top level)
#   make -f pipelines/demo.mk -j2 OUT=/tmp/demo PAIRS=8
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:

BUILD ?= build
BIN   := $(BUILD)/bin
OUT   ?= $(BUILD)/demo
PAIRS ?= 4
SEED  ?= 1
SYN   := $(OUT)/synth
IDS   := $(shell seq -f 'synth%03g' 1 $(PAIRS))

.PHONY: all
all: $(OUT)/before.tsv $(OUT)/after.tsv
	@echo "== $(PAIRS) synthetic MR->CT pairs (lm-synth --seed $(SEED)), identity vs the known field"
	@printf '%-28s %-16s %-14s %s\n' "" "Dice % mean (std)" "HD95 mm" "folding %"
	@for f in before after; do \
	    awk -F'\t' -v n="$$f" '$$1=="mean(std)" {printf "%-28s %-16s %-14s %s\n", \
	        (n=="before" ? "before (identity)" : "after (lm-warp, true field)"), $$3, $$4, $$5}' \
	        $(OUT)/$$f.tsv; done
	@echo "per pair: $(OUT)/before.tsv $(OUT)/after.tsv; streams: $(OUT)/*.lmt"

# The pairs and their true fields (pairs.tsv is written last).
$(SYN)/pairs.tsv: $(BIN)/lm-synth
	$(BIN)/lm-synth -q -n $(PAIRS) --seed $(SEED) --same-subject -o $(SYN)

# One record per pair: images normalised (MR percentile window, CT HU window) on one grid.
$(OUT)/%.pre.lmt: $(SYN)/pairs.tsv $(BIN)/lm-preprocess
	$(BIN)/lm-preprocess -q --pair $* $(SYN)/$*_mr.nii.gz $(SYN)/$*_ct.nii.gz \
	    $(SYN)/$*_mr_seg.nii.gz $(SYN)/$*_ct_seg.nii.gz -o $@

# The known moving->fixed field joins the record; lm-warp adds warped and warped_seg.
$(OUT)/%.warped.lmt: $(OUT)/%.pre.lmt $(BIN)/lm-cat $(BIN)/lm-warp
	$(BIN)/lm-cat --add-field flow=$(SYN)/$*_flow.nii $< | $(BIN)/lm-warp -q -o $@

$(OUT)/before.tsv: $(IDS:%=$(OUT)/%.pre.lmt) $(BIN)/lm-metrics
	cat $(IDS:%=$(OUT)/%.pre.lmt) | $(BIN)/lm-metrics -q --initial -o $@

$(OUT)/after.tsv: $(IDS:%=$(OUT)/%.warped.lmt) $(BIN)/lm-metrics
	cat $(IDS:%=$(OUT)/%.warped.lmt) | $(BIN)/lm-metrics -q -o $@
