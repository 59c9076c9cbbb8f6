"""torchvision's ResNets written out in torch (v1.5: the stride on the 3x3 conv of a bottleneck),
with torchvision's module names: the reference the converter compares its logits with. torch is
imported inside the functions: it is optional (only this check needs it)."""
import numpy as np

from src.conversion.weight_files import ConversionError

# torchvision ResNet -> (block kind, blocks per stage)
ARCHS = {"resnet18": ("basic", [2, 2, 2, 2]),
         "resnet34": ("basic", [3, 4, 6, 3]),
         "resnet50": ("bottleneck", [3, 4, 6, 3])}


def _blocks(nn):
    """torchvision's BasicBlock and Bottleneck."""
    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    return BasicBlock, Bottleneck


def _resnet_class(nn):
    """torchvision's ResNet around a block class."""
    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], 2)
            self.layer3 = self._make_layer(block, 256, layers[2], 2)
            self.layer4 = self._make_layer(block, 512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet


def torch_resnet(arch, num_classes):
    """torchvision's ResNet ``arch`` (v1.5: stride on the 3x3 conv of a bottleneck), same module
    names."""
    from torch import nn
    basic, bottleneck = _blocks(nn)
    kind, stages = ARCHS[arch]
    return _resnet_class(nn)(basic if kind == "basic" else bottleneck, stages, num_classes)


def torch_logits(arch, num_classes, tv_arrays, batch, double=False):
    """Logits of the torch reference network in eval mode (float32, or float64 if ``double``)."""
    import torch
    model = torch_resnet(arch, num_classes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tv_arrays.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:  # cannot happen after map_tensors; guards the definition above
        raise ConversionError(f"torch reference {arch} does not fit the weights: missing "
                              f"{', '.join(missing[:3])}; unexpected {', '.join(list(unexpected)[:3])}")
    model.eval()
    inputs = torch.from_numpy(batch)
    if double:
        model, inputs = model.double(), inputs.double()
    with torch.no_grad():
        return model(inputs).double().numpy()
