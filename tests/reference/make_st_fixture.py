#!/usr/bin/env python3
"""Write tests/data/py_fixture.safetensors (by the `safetensors` package) and
tests/data/py_fixture.json (the values a C reader must recover).

Run from the repository root:  python3 tests/reference/make_st_fixture.py
Needs: numpy, safetensors, ml_dtypes (for bfloat16). Deterministic, no network.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import ml_dtypes
from safetensors.numpy import save

OUT_ST = "tests/data/py_fixture.safetensors"
OUT_JSON = "tests/data/py_fixture.json"
METADATA = {"pair": "case7", "spacing": "[2.0,2.0,2.0]", "note": "written by safetensors"}

NAN, INF = float("nan"), float("inf")
BF16 = np.dtype(ml_dtypes.bfloat16)

# safetensors dtype spelling for each numpy dtype
ST_NAME = {
    np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
    BF16: "BF16", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32", np.dtype(np.int64): "I64", np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}
# unsigned integer type of the same width, to read raw bit patterns of floats
BITS_VIEW = {"F16": np.uint16, "BF16": np.uint16, "F32": np.uint32, "F64": np.uint64}


def make_tensors():
    t = {}
    f32 = np.finfo(np.float32)
    # F32 [2,5]: -0, NaN, +Inf, -Inf, smallest subnormal, largest finite,
    # smallest normal, 0.1 (rounded), 1.5, -2.25
    t["t_f32"] = np.array([[-0.0, NAN, INF, -INF, float(f32.smallest_subnormal)],
                           [float(f32.max), float(f32.smallest_normal), 0.1, 1.5, -2.25]],
                          dtype=np.float32)
    f64 = np.finfo(np.float64)
    # F64 [8]
    t["t_f64"] = np.array([-0.0, NAN, INF, -INF, float(f64.smallest_subnormal),
                           float(f64.max), 0.1, -1.0 / 3.0], dtype=np.float64)
    f16 = np.finfo(np.float16)
    # F16 [2,1,4]: smallest subnormal 2^-24, largest subnormal, max 65504, 1/3 rounded
    t["t_f16"] = np.array([-0.0, NAN, INF, -INF, float(f16.smallest_subnormal),
                           float(np.uint16(0x03FF).view(np.float16)), float(f16.max),
                           1.0 / 3.0], dtype=np.float16).reshape(2, 1, 4)
    fb = ml_dtypes.finfo(ml_dtypes.bfloat16)
    # BF16 [2,4]: smallest subnormal 2^-133, max 3.3895314e38, 1/3 rounded (RNE), 1.0
    t["t_bf16"] = np.array([-0.0, NAN, INF, -INF, float(fb.smallest_subnormal),
                            float(fb.max), 1.0 / 3.0, 1.0], dtype=np.float32
                           ).astype(ml_dtypes.bfloat16).reshape(2, 4)
    # integers: min and max of each type plus a few ordinary values
    t["t_u8"] = np.array([0, 255, 1, 128, 127, 42], dtype=np.uint8).reshape(2, 3)
    t["t_i8"] = np.array([-128, 127, -1], dtype=np.int8)                    # [3]
    t["t_i16"] = np.array([-32768, 32767, 0, -1, 1000, -1000], dtype=np.int16).reshape(2, 1, 3)
    t["t_u16"] = np.array([0, 65535, 1, 32768], dtype=np.uint16).reshape(2, 2)
    t["t_i32"] = np.array([-2147483648, 2147483647, 0, -1, 123456789, -7],
                          dtype=np.int32).reshape(3, 2)
    t["t_u32"] = np.array([0, 4294967295, 1, 2147483648], dtype=np.uint32)  # [4]
    t["t_i64"] = np.array([-9223372036854775808, 9223372036854775807, 0, -1,
                           9007199254740993], dtype=np.int64)               # [5]
    t["t_u64"] = np.array([0, 18446744073709551615, 1, 9223372036854775808],
                          dtype=np.uint64).reshape(2, 2)
    t["t_bool"] = np.array([True, False, True, True, False, False], dtype=np.bool_).reshape(2, 3)
    t["t_f32_3d"] = (np.arange(24, dtype=np.float64) * 0.5 - 3).astype(np.float32).reshape(2, 3, 4)
    t["t_scalar"] = np.array(42.5, dtype=np.float32)                        # shape []
    t["t_one"] = np.array([7.25], dtype=np.float32)                         # shape [1]
    t["t_empty"] = np.zeros((0,), dtype=np.float32)                         # shape [0]
    t["t_empty2"] = np.zeros((2, 0, 3), dtype=np.int32)                     # shape [2,0,3]
    return t


def float_json(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0.0 and math.copysign(1.0, x) < 0:
        return "-0"
    return x  # json writes repr(): shortest string that round-trips the double exactly


def values_json(arr, st):
    flat = np.ascontiguousarray(arr).reshape(-1)
    if st in ("F16", "BF16", "F32", "F64"):
        return [float_json(v) for v in flat.astype(np.float64)]
    if st == "BOOL":
        return [1 if bool(v) else 0 for v in flat]
    if st in ("I64", "U64"):
        return [str(int(v)) for v in flat]  # decimal strings: exact, no double rounding
    return [int(v) for v in flat]


def main():
    if not os.path.isdir("tests/data"):
        sys.exit("run from the repository root (tests/data not found)")
    tensors = make_tensors()
    # safetensors keeps __metadata__ in a Rust HashMap, so its key order in the header
    # changes from call to call. For a byte-stable fixture, call the writer until it
    # happens to emit the keys in sorted order (1 in 6 for 3 keys); the bytes written
    # are still exactly what safetensors produced.
    want = "{" + ",".join(json.dumps(k) + ":" + json.dumps(METADATA[k]) for k in sorted(METADATA)) + "}"
    for attempt in range(1, 2001):
        blob = save(tensors, metadata=METADATA)
        if b'"__metadata__":' + want.encode() in blob[:4096]:
            break
    else:
        sys.exit("safetensors never wrote the metadata keys in sorted order")
    with open(OUT_ST, "wb") as f:
        f.write(blob)
    print(f"safetensors.numpy.save({len(tensors)} tensors, metadata={METADATA!r}) -> {OUT_ST} "
          f"(attempt {attempt}: metadata keys came out sorted)")

    raw = open(OUT_ST, "rb").read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header_text = raw[8:8 + header_len].decode("utf-8")
    header = json.loads(header_text)
    # tensor names in the order their data lies in the file
    data_order = sorted((k for k in header if k != "__metadata__"),
                        key=lambda k: tuple(header[k]["data_offsets"]))

    out_tensors = []
    for name in sorted(tensors):
        arr = tensors[name]
        st = ST_NAME[arr.dtype]
        h = header[name]
        assert h["dtype"] == st and h["shape"] == list(arr.shape), (name, h)
        entry = {"name": name, "dtype": st, "shape": list(arr.shape),
                 "data_offsets": h["data_offsets"],
                 "values": values_json(arr, st)}
        if st in BITS_VIEW:
            entry["bits"] = [int(b) for b in np.ascontiguousarray(arr).reshape(-1).view(BITS_VIEW[st])]
        out_tensors.append(entry)

    doc = {
        "file": OUT_ST,
        "file_size": len(raw),
        "header_len": header_len,
        "header_json_len_unpadded": len(header_text.rstrip(" ")),
        "data_start": 8 + header_len,
        "metadata": METADATA,
        "data_order": data_order,
        "tensors": out_tensors,
    }
    with open(OUT_JSON, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT_JSON} ({len(out_tensors)} tensors); {OUT_ST}: {len(raw)} bytes, header_len {header_len}")


if __name__ == "__main__":
    main()
