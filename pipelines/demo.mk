# demo.mk — the README's main job on the embedded default: no downloads, well under a minute on
# 2 cores. lm-synth makes 4 multimodal pairs (MR-like moving, CT-like fixed, label maps, the true
# deformation), lm-preprocess streams them, lm-warp applies the known field, and lm-metrics
# prints Dice/HD95/folding before (identity) and after. The network runs too, as the stage
# pipeline lm-encode | lm-leb | lm-decode | lm-warp, from a freshly initialised checkpoint
# (lm-init) over a seeded random LLaMA-shaped LLM folder (no download): its flow is near
# zero until training exists (lm-train, a later issue), so its scores are the identity's.
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
all: $(OUT)/before.tsv $(OUT)/after.tsv $(OUT)/network.tsv
	@echo "== $(PAIRS) synthetic MR->CT pairs (lm-synth --seed $(SEED)), identity vs the known field"
	@printf '%-28s %-16s %-14s %s\n' "" "Dice % mean (std)" "HD95 mm" "folding %"
	@for f in before after network; do \
	    awk -F'\t' -v n="$$f" '$$1=="mean(std)" {printf "%-28s %-16s %-14s %s\n", \
	        (n=="before" ? "before (identity)" : n=="after" ? "after (lm-warp, true field)" : \
	         "network (untrained init)"), $$3, $$4, $$5}' $(OUT)/$$f.tsv; done
	@echo "(the network row uses a freshly initialised checkpoint and a random stand-in LLM:"
	@echo " its field is ~0 until the network is trained; see man lm-init)"
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

# The network: a random stand-in LLM (stories260K's shapes), a fresh checkpoint, and the stage
# pipeline per pair. With a real LLM folder: LLM=path/to/hf-folder.
LLM ?= $(OUT)/random-llm
$(OUT)/random-llm/config.json: $(BIN)/lm-init
	$(BIN)/lm-init -q --random-llm $(OUT)/random-llm --seed $(SEED)

$(OUT)/net.safetensors: $(if $(filter $(OUT)/random-llm,$(LLM)),$(OUT)/random-llm/config.json) $(BIN)/lm-init
	$(BIN)/lm-init -q --preset tiny --llm $(LLM) --shape 64x64x64 --seed $(SEED) -o $@

$(OUT)/%.net.lmt: $(OUT)/%.pre.lmt $(OUT)/net.safetensors $(BIN)/lm-encode $(BIN)/lm-leb $(BIN)/lm-decode
	$(BIN)/lm-encode -q -w $(OUT)/net.safetensors $< | $(BIN)/lm-leb -q -w $(OUT)/net.safetensors \
	    --llm $(LLM) | $(BIN)/lm-decode -q -w $(OUT)/net.safetensors | $(BIN)/lm-warp -q -o $@

$(OUT)/network.tsv: $(IDS:%=$(OUT)/%.net.lmt) $(BIN)/lm-metrics
	cat $(IDS:%=$(OUT)/%.net.lmt) | $(BIN)/lm-metrics -q -o $@
