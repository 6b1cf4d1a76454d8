// swift-tools-version:6.0
import PackageDescription

// Hot numeric loops are compiled for Haswell-level x86-64 (AVX2 + FMA): without FMA, SIMD `addProduct`
// lowers to a libm call. The CI and developer machines are Zen 5 (AVX-512), so this is safe there.
// They are optimized in debug builds too, so the test suite (a debug build) runs at usable speed.
let numericFlags: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-Xcc", "-march=haswell", "-target-cpu", "haswell"],
                 .when(platforms: [.linux], configuration: .release)),
    .unsafeFlags(["-O", "-target-cpu", "haswell"], .when(platforms: [.linux], configuration: .debug)),
]

let package = Package(
    name: "mesa",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mesa", targets: ["mesa"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // One system-library shim per C library; each is imported by exactly one target.
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        .systemLibrary(name: "CLMDB", path: "Sources/CLMDB"),
        .systemLibrary(name: "CRdKafka", path: "Sources/CRdKafka"),

        .target(name: "Tensor", dependencies: ["COpenBLAS"], swiftSettings: numericFlags),
        .target(name: "Tokenizers", swiftSettings: numericFlags),
        .target(name: "ModelRuntime", dependencies: ["Tensor", "Tokenizers"], swiftSettings: numericFlags),
        .target(name: "Contracts"),
        .target(name: "Storage", dependencies: ["CLMDB"]),
        .target(name: "Messaging", dependencies: ["CRdKafka"]),
        .executableTarget(
            name: "mesa",
            dependencies: [
                "Tensor", "Tokenizers", "ModelRuntime", "Contracts", "Storage", "Messaging",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .testTarget(name: "TensorTests", dependencies: ["Tensor"]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "ModelRuntime"]),
        .testTarget(name: "ModelRuntimeTests", dependencies: ["ModelRuntime", "Tensor", "Tokenizers"]),
        .testTarget(name: "ContractsTests", dependencies: ["Contracts"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage"]),
        .testTarget(name: "MessagingTests", dependencies: ["Messaging"]),
    ],
    swiftLanguageModes: [.v5]
)
