# Static post-training quantization of a nanoclass ONNX export with ONNX Runtime's quantizer
# (onnxruntime.quantization), run by `nanoclass quantize`:
#
#   python3 quantize_ort.py FP32.onnx CALIBRATION.f32 N SIZE OUT.onnx [METHOD]
#
# CALIBRATION.f32 holds N preprocessed training images, [N, 3, SIZE, SIZE] little-endian f32,
# exactly as nanoclass feeds the model. The output is QDQ: u8 activations (asymmetric, MinMax
# calibration by default; METHOD: minmax, entropy or percentile), per-channel s8 weights.
import sys

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

src, calibration, n, size, out = sys.argv[1:6]
method = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}[sys.argv[6] if len(sys.argv) > 6 else "minmax"]
n, size = int(n), int(size)
x = np.fromfile(calibration, dtype="<f4").reshape(n, 3, size, size)


class Images(CalibrationDataReader):
    def __init__(self):
        self.i = 0

    def get_next(self):
        if self.i >= n:
            return None
        self.i += 1
        return {"input_0": x[self.i - 1 : self.i]}


prepared = out + ".prepared.onnx"
quant_pre_process(src, prepared, skip_symbolic_shape=True)
quantize_static(
    prepared,
    out,
    Images(),
    quant_format=QuantFormat.QDQ,
    per_channel=True,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    calibrate_method=method,
)
print("ok")
