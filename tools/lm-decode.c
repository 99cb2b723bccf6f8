/* lm-decode — the decoder of the network (MODEL.md §6–§7): adapters A4..A1, voxel shuffle,
 * stages S4..S1 with flow heads, warps and composition, as a streaming filter: `tokens`,
 * fm1..fm4, ff1..ff4, `moving` -> `flow` (plus `flow_full` for half-resolution configs, 2·up)
 * for every record; everything else passes
 * through. Weights come from a checkpoint (lm-init, lm-train) and are loaded once.
 * The numbers are in libcommon/model (lm_net.h). */
#include "model/lm_net.h"

int main(int argc, char **argv)
{
    return lm_net_tool_main(argc, argv, "-w CKPT [options] [STREAM]",
                            "Decode each record: tokens, fm1..fm4, ff1..ff4, moving -> flow (and flow_full).",
                            lm_net_stage_decode, "decoding", 0);
}
