/* lm-leb — the two LLM encoding blocks of the network (MODEL.md §4–§5) as a streaming filter:
 * fm5, ff5 -> tokens (the tokeniser, Adapter0 + a frozen LLM layer with LoRA, twice) for every
 * record; everything else passes through. The LLM layers are read once from a Hugging Face
 * folder and must be those the checkpoint was made with (checksum). lm_net.h has the numbers.
 */
#include "model/lm_net.h"

int main(int argc, char **argv)
{
    return lm_net_tool_main(argc, argv, "-w CKPT [--llm DIR] [options] [STREAM]",
                            "Run the LLM encoding blocks on each record: fm5, ff5 -> tokens.",
                            lm_net_stage_leb, "LEBs", 1);
}
