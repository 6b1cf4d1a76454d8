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

let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")
let inMemoryLogging: Target.Dependency = .product(name: "InMemoryLogging", package: "swift-log")
let metrics: Target.Dependency = .product(name: "Metrics", package: "swift-metrics")
let prometheus: Target.Dependency = .product(name: "Prometheus", package: "swift-prometheus")
let serviceLifecycle: Target.Dependency = .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let unixSignals: Target.Dependency = .product(name: "UnixSignals", package: "swift-service-lifecycle")
let hummingbird: Target.Dependency = .product(name: "Hummingbird", package: "hummingbird")
let hummingbirdCore: Target.Dependency = .product(name: "HummingbirdCore", package: "hummingbird")
let nioCore: Target.Dependency = .product(name: "NIOCore", package: "swift-nio")

let package = Package(
    name: "mesa",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mesa", targets: ["mesa"]),
        .executable(name: "mesa-bench", targets: ["mesa-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // One system-library shim per C library; each is imported by exactly one target.
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        .systemLibrary(name: "CLMDB", path: "Sources/CLMDB"),
        .systemLibrary(name: "CRdKafka", path: "Sources/CRdKafka"),

        // Vectorizable C kernels (exp-based activations); clang auto-vectorizes them at -O3.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-march=haswell", "-fno-math-errno"], .when(platforms: [.linux]))]),
        .target(name: "Tensor", dependencies: ["COpenBLAS", "CKernels"], swiftSettings: numericFlags),
        .target(name: "Tokenizers", swiftSettings: numericFlags),
        .target(name: "ModelRuntime", dependencies: ["Tensor", "Tokenizers"], swiftSettings: numericFlags),
        // BatchTopK sparse autoencoders: training, files (SAELens / dictionary_learning), activation harvesting.
        .target(name: "SparseAutoencoder", dependencies: ["ModelRuntime", "Tensor"], swiftSettings: numericFlags),
        .target(name: "Editing", dependencies: ["ModelRuntime", "Tensor", "Tokenizers", "SparseAutoencoder", logging], swiftSettings: numericFlags),
        .target(name: "Evaluation"),
        .target(name: "Contracts"),
        .target(name: "Storage", dependencies: ["CLMDB", "Tensor"]),
        // Contracts: the JSON parser structured CloudEvents are read with (the one that validates events).
        .target(name: "Messaging", dependencies: ["CRdKafka", "Contracts", logging]),
        // The daemon: the one place that composes the model, the editor, storage and messaging.
        .target(name: "EditDaemon", dependencies: ["Tensor", "ModelRuntime", "SparseAutoencoder", "Editing", "Evaluation", "Contracts", "Storage", "Messaging", logging, metrics, prometheus,
                                                   serviceLifecycle, unixSignals, hummingbird, hummingbirdCore, nioCore]),
        // Evaluation runs (`mesa eval`): CounterFact cases through an editor, a sequential run journaled in a snapshot store
        // through the daemon's ModelHost. Evaluation itself stays a leaf (CounterFact data, metrics, reports).
        .target(name: "EditEvaluation", dependencies: ["Editing", "Evaluation", "EditDaemon", "ModelRuntime", "Storage", "Tensor", logging]),
        .executableTarget(
            name: "mesa",
            dependencies: [
                "Tensor", "Tokenizers", "ModelRuntime", "SparseAutoencoder", "Editing", "Evaluation", "Contracts", "Storage", "Messaging", "EditDaemon",
                "EditEvaluation", logging, metrics, prometheus, unixSignals,
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .executableTarget(
            name: "mesa-bench",
            dependencies: ["CKernels", "Tensor", "ModelRuntime", "SparseAutoencoder", "Editing", "Evaluation", "EditDaemon", "Messaging", "Storage", "TestSupport", logging,
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/mesa-bench"),

        .executableTarget(name: "mesa-bench-validate", dependencies: ["Contracts"], path: "Sources/mesa-bench-validate"),

        // Shared by the test targets: the tiny model writer and paths.
        .target(name: "TestSupport", dependencies: ["ModelRuntime", "Tokenizers"], swiftSettings: numericFlags),

        .testTarget(name: "TensorTests", dependencies: ["Tensor", "CKernels"]),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "ModelRuntime", "TestSupport"]),
        .testTarget(name: "ModelRuntimeTests", dependencies: ["ModelRuntime", "Tensor", "Tokenizers"]),
        .testTarget(name: "EditingTests", dependencies: ["Editing", "ModelRuntime", "Tensor", "Tokenizers", "Contracts", "TestSupport", logging, inMemoryLogging]),
        .testTarget(name: "IntegrationTests", dependencies: ["EditDaemon", "Messaging", "Storage", "Editing", "ModelRuntime", "SparseAutoencoder", "Tensor", "TestSupport", "Contracts", "Evaluation", logging, serviceLifecycle]),
        .testTarget(name: "SparseAutoencoderTests", dependencies: ["SparseAutoencoder", "ModelRuntime", "Tensor", "TestSupport"]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation"]),
        .testTarget(name: "EditEvaluationTests", dependencies: ["EditEvaluation", "Editing", "ModelRuntime", "TestSupport"]),
        .testTarget(name: "ContractsTests", dependencies: ["Contracts"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "Tensor"]),
        .testTarget(name: "MessagingTests", dependencies: ["Messaging", "Contracts", "TestSupport", logging]),
        .testTarget(name: "EditDaemonTests", dependencies: ["EditDaemon", "Contracts", "Messaging", "Evaluation", logging, inMemoryLogging, prometheus, metrics, hummingbird, serviceLifecycle]),
    ],
    // Every target is in Swift 6 language mode (strict concurrency checking).
    swiftLanguageModes: [.v6]
)
