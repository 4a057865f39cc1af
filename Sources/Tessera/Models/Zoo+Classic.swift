/// AlexNet, VGG and MobileNetV2 exactly as torchvision builds them (layer indices as its
/// state_dict names: `features.0.weight`, `classifier.6.bias`, `features.3.conv.1.0.weight`…).
extension Zoo {
  /// torchvision's AlexNet (the one-GPU variant: 64-192-384-256-256 channels), 61,100,840 parameters.
  public static func alexnet(classes: Int, inputChannels: Int = 3) -> Sequential {
    let features = Sequential(indexed: [
      Conv2D(inputChannels: inputChannels, outputChannels: 64, kernelSize: 11, stride: 4, padding: .symmetric(2)), ReLU(),
      Pool2D(.max, kernelSize: 3, stride: 2),
      Conv2D(inputChannels: 64, outputChannels: 192, kernelSize: 5, padding: .symmetric(2)), ReLU(),
      Pool2D(.max, kernelSize: 3, stride: 2),
      Conv2D(inputChannels: 192, outputChannels: 384, kernelSize: 3, padding: .symmetric(1)), ReLU(),
      Conv2D(inputChannels: 384, outputChannels: 256, kernelSize: 3, padding: .symmetric(1)), ReLU(),
      Conv2D(inputChannels: 256, outputChannels: 256, kernelSize: 3, padding: .symmetric(1)), ReLU(),
      Pool2D(.max, kernelSize: 3, stride: 2),
    ])
    let classifier = Sequential(indexed: [
      Dropout(rate: 0.5), Linear(inputFeatures: 256 * 6 * 6, outputFeatures: 4096), ReLU(),
      Dropout(rate: 0.5), Linear(inputFeatures: 4096, outputFeatures: 4096), ReLU(),
      Linear(inputFeatures: 4096, outputFeatures: classes),
    ])
    return Sequential([("features", features), ("avgpool", AdaptiveAvgPool2D(outputSize: (6, 6))),
                       ("flatten", Flatten()), ("classifier", classifier)])
  }

  static let vggConfigs: [String: [Int]] = [
    "vgg11": [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
    "vgg16": [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0],
  ]

  /// torchvision's VGG (no BatchNorm; 0 in the configuration is a 2×2 max-pool). With
  /// `fullyConvolutional` the 3-layer FC head is replaced by a 1×1 conv to the classes and a
  /// global average pool, so any input size works and the FC share of parameters disappears.
  public static func vgg(_ name: String, classes: Int, inputChannels: Int = 3, fullyConvolutional: Bool = false)
    -> Sequential?
  {
    guard let cfg = vggConfigs[name] else { return nil }
    var layers = [Layer](), c = inputChannels
    for v in cfg {
      if v == 0 {
        layers.append(Pool2D(.max, kernelSize: 2, stride: 2))
      } else {
        layers.append(Conv2D(inputChannels: c, outputChannels: v, kernelSize: 3, padding: .symmetric(1)))
        layers.append(ReLU())
        c = v
      }
    }
    let features = Sequential(indexed: layers)
    if fullyConvolutional {
      return Sequential([("features", features), ("head", Conv2D(inputChannels: c, outputChannels: classes, kernelSize: 1)),
                         ("pool", GlobalAvgPool2D())])
    }
    let classifier = Sequential(indexed: [
      Linear(inputFeatures: 512 * 7 * 7, outputFeatures: 4096), ReLU(), Dropout(rate: 0.5),
      Linear(inputFeatures: 4096, outputFeatures: 4096), ReLU(), Dropout(rate: 0.5),
      Linear(inputFeatures: 4096, outputFeatures: classes),
    ])
    return Sequential([("features", features), ("avgpool", AdaptiveAvgPool2D(outputSize: (7, 7))),
                       ("flatten", Flatten()), ("classifier", classifier)])
  }

  /// torchvision's MobileNetV2 (width 1.0): inverted residual blocks with depthwise 3×3 convs, ReLU6
  /// and linear bottlenecks; 3,504,872 parameters with 1000 classes.
  public static func mobilenetV2(classes: Int, inputChannels: Int = 3) -> Sequential {
    func bn(_ c: Int) -> BatchNorm2D { BatchNorm2D(channels: c, epsilon: 1e-5, momentum: 0.9) }
    func convBN(_ cin: Int, _ cout: Int, kernel: Int, stride: Int = 1, groups: Int = 1) -> Sequential {
      Sequential(indexed: [
        Conv2D(inputChannels: cin, outputChannels: cout, kernelSize: kernel, stride: stride,
               padding: .symmetric((kernel - 1) / 2), groups: groups, bias: false),
        bn(cout), ReLU6(),
      ])
    }
    var features: [Layer] = [convBN(inputChannels, 32, kernel: 3, stride: 2)]
    var cin = 32
    let settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for (t, c, n, s) in settings {
      for i in 0..<n {
        let stride = i == 0 ? s : 1, hidden = cin * t
        var parts = [Layer]()
        if t != 1 { parts.append(convBN(cin, hidden, kernel: 1)) }
        parts.append(convBN(hidden, hidden, kernel: 3, stride: stride, groups: hidden))
        parts.append(Conv2D(inputChannels: hidden, outputChannels: c, kernelSize: 1, bias: false))
        parts.append(bn(c))
        let body = Sequential([("conv", Sequential(indexed: parts))])
        features.append(stride == 1 && cin == c
                        ? ResidualBlock(main: body, shortcut: nil, finalReLU: false) as Layer : body)
        cin = c
      }
    }
    features.append(convBN(cin, 1280, kernel: 1))
    return Sequential([
      ("features", Sequential(indexed: features)), ("pool", GlobalAvgPool2D()),
      ("classifier", Sequential(indexed: [Dropout(rate: 0.2), Linear(inputFeatures: 1280, outputFeatures: classes)])),
    ])
  }
}
