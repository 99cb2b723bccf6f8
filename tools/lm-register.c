/* lm-register — the whole network in one process (ARCHITECTURE.md §6, the fast path):
 * moving, fixed -> flow (plus flow_full for half-resolution configs) for every record of a
 * stream; everything else passes through. Or NIfTI pairs in (operands or --pairs), preprocessed
 * as lm-preprocess does (net_register.c), one record per pair out; or, with -o naming NIfTI
 * output, the warped images and label maps lm-warp would write (libcommon/warp). Same library calls as
 * lm-encode | lm-leb | lm-decode, so on the CPU backend its fields equal the pipeline's bit for
 * bit.
 */
#include "model/lm_net.h"

int main(int argc, char **argv)
{
    return lm_net_tool_main(argc, argv, "-w CKPT [--llm DIR] [options] [STREAM]\n"
                            "       lm-register -w CKPT [options] MOVING FIXED [MOVING_SEG FIXED_SEG]\n"
                            "       lm-register -w CKPT [options] --pairs LIST",
                            "Register each record's moving image to its fixed image: moving, fixed -> "
                            "flow\n(and flow_full for half-resolution configs) with the whole "
                            "network in one process. NIfTI pairs are\npreprocessed as lm-preprocess "
                            "does, onto the checkpoint's grid by default. Writes a stream, or\n"
                            "with -o FILE.nii.gz or -o DIR the warped images and label maps as "
                            "lm-warp does.",
                            lm_net_stage_register, "registering", 1);
}
