import json, sys, numpy as np, onnxruntime as ort
d = sys.argv[1]                                   # the export folder holding golden/
m = json.load(open(f"{d}/golden/manifest.json"))
s = ort.InferenceSession(f"{d}/{m['model']}", providers=["CPUExecutionProvider"])
worst = 0.0
for g in m["samples"]:
    x = np.fromfile(f"{d}/golden/{g['input']}", "<f4").reshape(m["input_shape"])
    y = s.run(None, {m["input_name"]: x})[0][0]
    worst = max(worst, float(np.abs(y - g["expected"]).max()))
    assert m["output"] == "points" or y.argmax() == np.argmax(g["expected"]), g["source"]
print(f"largest difference {worst:.2e}"); sys.exit(worst > 1e-4)
