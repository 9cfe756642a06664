import json, sys, numpy as np, torch
d = sys.argv[1]                                   # the unzipped bundle holding golden/
m = json.load(open(f"{d}/golden/manifest.json"))
k = len(m["samples"][0]["expected"])
if m["arch"] == "efficientnet_lite0":             # pip install efficientnet-lite-pytorch==0.1.0
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=k)
else:                                             # resnet18 / resnet34 / resnet50
    import torchvision
    net = getattr(torchvision.models, m["arch"])(num_classes=k)
net.load_state_dict(torch.load(f"{d}/{m['model']}", weights_only=True), strict=True)
net.eval()
worst = 0.0
for g in m["samples"]:
    x = np.fromfile(f"{d}/golden/{g['input']}", "<f4").reshape(m["input_shape"])
    with torch.no_grad():
        y = net(torch.from_numpy(x))[0].numpy()
    worst = max(worst, float(np.abs(y - g["expected"]).max()))
    assert y.argmax() == np.argmax(g["expected"]), g["source"]
print(f"largest difference {worst:.2e}"); sys.exit(worst > 1e-4)
