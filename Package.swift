// swift-tools-version:6.1
import PackageDescription

// Target flags: without them SwiftPM's release build lowers SIMD `addingProduct` to one `fmaf` call per
// lane (≈ 0.8 GFLOP/s). x86-64-v3 = AVX2 + FMA + F16C, on every x86-64 CPU since 2013; on Zen 4 AVX2
// kernels reach the same L1 ceiling as AVX-512 (../shared/MEASURED.md), so the kernels are written
// for 8-lane vectors. Other architectures build with their defaults.
#if arch(x86_64)
let targetFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-march=x86-64-v3"])]
#else
let targetFlags: [SwiftSetting] = []
#endif
// The kernels are optimised in debug builds too, so `swift test` runs real-sized checks quickly.
let kernelFlags = targetFlags + [
  .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
  .unsafeFlags(["-O"], .when(configuration: .debug)),
]

let package = Package(
  name: "Tessera",
  platforms: [.macOS(.v13)],
  products: [
    .library(name: "TesseraKernels", targets: ["TesseraKernels"]),
    .library(name: "Tessera", targets: ["Tessera"]),
    .library(name: "TesseraPlanner", targets: ["TesseraPlanner"]),
    .library(name: "TesseraData", targets: ["TesseraData"]),
    .library(name: "TesseraTIFF", targets: ["TesseraTIFF"]),
    .library(name: "TesseraTraining", targets: ["TesseraTraining"]),
    .executable(name: "tessera", targets: ["tessera"]),
  ],
  // `swift build -c release --traits MPI` builds the same `tessera` with Open MPI inside (needs
  // Debian's libopenmpi-dev); the default build needs nothing of it.
  traits: [.trait(name: "MPI", description: "Data-, tile- and pipeline-parallel training over Open MPI (mpirun).")],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
  ],
  targets: [
    // bf16 convolution kernels (AVX512_BF16 under target attributes, chosen at run time).
    .target(name: "CTesseraBF16", cSettings: [.unsafeFlags(["-O2"])]),
    .target(name: "TesseraKernels", dependencies: ["CTesseraBF16"], swiftSettings: kernelFlags),
    .target(name: "Tessera", dependencies: ["TesseraKernels", .product(name: "Yams", package: "Yams")],
            swiftSettings: targetFlags),
    .target(name: "TesseraPlanner", dependencies: ["Tessera"], swiftSettings: targetFlags),
    // libjpeg-turbo and libpng from the system (Debian: libjpeg62-turbo-dev, libpng-dev).
    .target(name: "CTesseraImage", cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png16")]),
    .target(name: "TesseraData", dependencies: ["Tessera", "CTesseraImage"], swiftSettings: kernelFlags),
    // libtiff, loaded at run time (dlopen): nothing to install for the default build; JPEG tiles
    // read in part are decoded straight with the system libjpeg-turbo.
    .target(name: "CTesseraTIFF", cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("jpeg")]),
    .target(name: "TesseraTIFF", dependencies: ["Tessera", "TesseraData", "CTesseraTIFF"], swiftSettings: kernelFlags),
    .target(name: "TesseraTraining", dependencies: ["Tessera", "TesseraData", "TesseraPlanner", "TesseraTIFF", "TesseraDistributed"], swiftSettings: targetFlags),
    // ONNX in and out: onnx.pb.swift generated from onnx.proto (scripts/generate_onnx_swift.sh).
    .target(name: "TesseraONNX", dependencies: ["Tessera", "TesseraKernels", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: targetFlags),
    // Open MPI's C API (only with the MPI trait) and the runs spread over processes.
    .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
    .target(name: "TesseraDistributed",
            dependencies: ["Tessera", "TesseraKernels", .target(name: "CMPI", condition: .when(traits: ["MPI"]))],
            swiftSettings: targetFlags),
    // Reports people look at: the HTML run report, the plan page, TensorBoard event files.
    .target(name: "TesseraReport", dependencies: ["Tessera", "TesseraData", "TesseraPlanner", "TesseraTraining"], swiftSettings: targetFlags),
    .executableTarget(
      name: "tessera",
      dependencies: ["Tessera", "TesseraPlanner", "TesseraData", "TesseraTIFF", "TesseraTraining", "TesseraReport", "TesseraONNX", "TesseraDistributed", .product(name: "ArgumentParser", package: "swift-argument-parser")],
      swiftSettings: targetFlags),
    // Fuzz targets (scripts/fuzz.sh builds them with libFuzzer; a plain build replays inputs).
    .executableTarget(name: "tessera-fuzz", dependencies: ["Tessera", "TesseraData", "TesseraTIFF", "TesseraTraining", "TesseraONNX"],
                      swiftSettings: targetFlags),
    .target(name: "TestSupport", dependencies: ["Tessera"], path: "Tests/TestSupport",
            swiftSettings: targetFlags),
    .testTarget(name: "TesseraKernelsTests", dependencies: ["TesseraKernels", "TestSupport"],
                swiftSettings: targetFlags),
    .testTarget(name: "TesseraTests", dependencies: ["Tessera", "TestSupport"],
                swiftSettings: targetFlags),
    .testTarget(name: "TesseraPlannerTests", dependencies: ["TesseraPlanner", "TestSupport"],
                swiftSettings: targetFlags),
    .testTarget(name: "TesseraDataTests", dependencies: ["TesseraData", "CTesseraImage", "TestSupport"],
                exclude: ["Fixtures"], swiftSettings: targetFlags),
    .testTarget(name: "TesseraTIFFTests", dependencies: ["TesseraTIFF", "TestSupport"], swiftSettings: targetFlags),
    .testTarget(name: "TesseraTrainingTests", dependencies: ["TesseraTraining", "TestSupport"], swiftSettings: targetFlags),
    .testTarget(name: "TesseraONNXTests", dependencies: ["TesseraONNX", "Tessera", "TesseraKernels", "TesseraPlanner", "TestSupport"], swiftSettings: targetFlags),
    .testTarget(name: "TesseraReportTests", dependencies: ["TesseraReport", "TesseraPlanner", "TesseraData", "TestSupport"], swiftSettings: targetFlags),
    .testTarget(name: "TesseraCLITests", dependencies: ["TestSupport", "TesseraData", "TesseraTIFF", "TesseraTraining"], swiftSettings: targetFlags),
  ],
  swiftLanguageModes: [.v5]
)
