/* lm_io.h — the whole host I/O library in one include. */
#ifndef LM_IO_H
#define LM_IO_H
#include "io/lm_atomic.h"
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "io/lm_safetensors.h"
#include "io/lm_stream.h"
#include "io/lm_tensor.h"
#endif
