// swift-tools-version: 6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "ConsentSync",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "consent-sync", targets: ["ConsentSyncCLI"]),
        .library(name: "ConsentSyncEngine", targets: ["ConsentSyncEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // C layers: the only places that see C pointers.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .target(
            name: "CCurl",
            linkerSettings: [.linkedLibrary("curl")]
        ),

        .target(
            name: "ConsentSyncPostgres",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncHTTP",
            dependencies: [
                "CCurl",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncCore",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncEngine",
            dependencies: [
                "ConsentSyncCore",
                "ConsentSyncPostgres",
                "ConsentSyncHTTP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncLogging",
            dependencies: [
                "ConsentSyncCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncOps",
            dependencies: [
                "ConsentSyncEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ConsentSyncCLI",
            dependencies: [
                "ConsentSyncEngine",
                "ConsentSyncCore",
                "ConsentSyncPostgres",
                "ConsentSyncHTTP",
                "ConsentSyncOps",
                "ConsentSyncLogging",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/consent-sync",
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ConsentSyncTestKit",
            dependencies: [
                "ConsentSyncCore",
                "ConsentSyncPostgres",
                "ConsentSyncEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),

        .testTarget(
            name: "ConsentSyncCoreTests",
            dependencies: ["ConsentSyncCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConsentSyncPostgresTests",
            dependencies: ["ConsentSyncPostgres", "ConsentSyncTestKit"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConsentSyncHTTPTests",
            dependencies: ["ConsentSyncHTTP", "ConsentSyncTestKit"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConsentSyncOpsTests",
            dependencies: [
                "ConsentSyncOps",
                "ConsentSyncEngine",
                "ConsentSyncTestKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConsentSyncCLITests",
            dependencies: [
                "ConsentSyncLogging",
                "ConsentSyncTestKit",
                "ConsentSyncCore",
                "ConsentSyncPostgres",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ConsentSyncEngineTests",
            dependencies: [
                "ConsentSyncEngine",
                "ConsentSyncHTTP",
                "ConsentSyncCore",
                "ConsentSyncPostgres",
                "ConsentSyncTestKit",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
