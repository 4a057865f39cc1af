/// Built-in architectures.
public enum Zoo {
  public static let names = [
    "fcn-large", "alexnet", "vgg11", "vgg16", "vgg11-fcn", "vgg16-fcn", "resnet18", "resnet34", "resnet50",
    "mobilenet_v2",
  ]

  /// Builds a model by name, or nil for an unknown name.
  public static func model(_ name: String, classes: Int, inputChannels: Int = 3) -> Sequential? {
    switch name.lowercased() {
    case "fcn-large", "fcn": fcnLarge(classes: classes, inputChannels: inputChannels)
    case "resnet18": resnet(blocks: [2, 2, 2, 2], bottleneck: false, classes: classes, inputChannels: inputChannels)
    case "resnet34": resnet(blocks: [3, 4, 6, 3], bottleneck: false, classes: classes, inputChannels: inputChannels)
    case "resnet50": resnet(blocks: [3, 4, 6, 3], bottleneck: true, classes: classes, inputChannels: inputChannels)
    case "alexnet": alexnet(classes: classes, inputChannels: inputChannels)
    case "vgg11", "vgg16": vgg(name.lowercased(), classes: classes, inputChannels: inputChannels)
    case "vgg11-fcn", "vgg16-fcn":
      vgg(String(name.lowercased().dropLast(4)), classes: classes, inputChannels: inputChannels, fullyConvolutional: true)
    case "mobilenet_v2", "mobilenet-v2", "mobilenetv2": mobilenetV2(classes: classes, inputChannels: inputChannels)
    default: nil
    }
  }

  /// The reference model of every benchmark (../shared/DESIGN.md, peers/keras_bench.py): conv 7×7/2
  /// → 16, BN, ReLU, max-pool 3×3/2; four stages [conv 3×3/2, BN, ReLU, conv 3×3/1, BN, ReLU] of
  /// 32, 64, 128, 256 channels; 1×1 conv head with bias; global average pool. Padding `same`, no
  /// bias before BN, BN epsilon 1e-3 and momentum 0.99 (Keras defaults).
  /// `bnMomentum` 0.99 is Keras's default (the peer's); short runs want a faster 0.9.
  public static func fcnLarge(classes: Int, inputChannels: Int = 3, bnMomentum: Float = 0.99) -> Sequential {
    // BatchNorm and the ReLU after it run as one fused layer (same numbers, one pass, one kept tensor).
    func bn(_ c: Int) -> BatchNorm2D { BatchNorm2D(channels: c, epsilon: 1e-3, momentum: bnMomentum, fusedReLU: true) }
    var layers: [(String, Layer)] = [
      ("stem", Sequential([
        ("conv", Conv2D(inputChannels: inputChannels, outputChannels: 16, kernelSize: 7, stride: 2, padding: .same,
                        bias: false)),
        ("bn", bn(16)),
        ("pool", Pool2D(.max, kernelSize: 3, stride: 2, padding: .same)),
      ]))
    ]
    var c = 16
    for (i, k) in [32, 64, 128, 256].enumerated() {
      layers.append(("stage\(i + 1)", Sequential([
        ("conv1", Conv2D(inputChannels: c, outputChannels: k, kernelSize: 3, stride: 2, padding: .same, bias: false)),
        ("bn1", bn(k)),
        ("conv2", Conv2D(inputChannels: k, outputChannels: k, kernelSize: 3, padding: .same, bias: false)),
        ("bn2", bn(k)),
      ])))
      c = k
    }
    layers.append(("head", Conv2D(inputChannels: c, outputChannels: classes, kernelSize: 1, bias: true)))
    layers.append(("pool", GlobalAvgPool2D()))
    return Sequential(layers)
  }

  /// torchvision's ResNet (v1.5: stride in the bottleneck's 3×3), names as torchvision's state_dict.
  public static func resnet(blocks: [Int], bottleneck: Bool, classes: Int, inputChannels: Int = 3) -> Sequential {
    var layers: [(String, Layer)] = [
      ("conv1", Conv2D(inputChannels: inputChannels, outputChannels: 64, kernelSize: 7, stride: 2,
                       padding: .symmetric(3), bias: false)),
      ("bn1", BatchNorm2D(channels: 64, epsilon: 1e-5, momentum: 0.9)),
      ("relu", ReLU()),
      ("maxpool", Pool2D(.max, kernelSize: 3, stride: 2, padding: .symmetric(1))),
    ]
    var c = 64
    let expansion = bottleneck ? 4 : 1
    for (i, n) in blocks.enumerated() {
      let width = 64 << i
      var stage = [(String, Layer)]()
      for b in 0..<n {
        let stride = (b == 0 && i > 0) ? 2 : 1
        let block = bottleneck
          ? ResidualBlock.bottleneck(inputChannels: c, channels: width, stride: stride)
          : ResidualBlock.basic(inputChannels: c, channels: width, stride: stride)
        stage.append((String(b), block))
        c = width * expansion
      }
      layers.append(("layer\(i + 1)", Sequential(stage)))
    }
    layers.append(("avgpool", GlobalAvgPool2D()))
    layers.append(("fc", Linear(inputFeatures: c, outputFeatures: classes)))
    return Sequential(layers)
  }
}
