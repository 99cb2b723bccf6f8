/* lm-encode — the shared Dual-PRNet++ encoder of the network (MODEL.md §3) as a streaming
 * filter: `moving`, `fixed` -> fm1..fm5, ff1..ff5 for every record; everything else passes
 * through. Weights come from a checkpoint (lm-init, lm-train) and are loaded once.
 * The numbers are in libcommon/model (lm_net.h). */
#include "model/lm_net.h"

int main(int argc, char **argv)
{
    return lm_net_tool_main(argc, argv, "-w CKPT [options] [STREAM]",
                            "Encode each record's moving and fixed images: moving, fixed -> fm1..fm5, ff1..ff5.",
                            lm_net_stage_encode, "encoding", 0);
}
