import ConsentSyncEngine
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// The daemon's operations endpoints on a small HTTP server of their own:
/// `GET /metrics` (Prometheus text format 0.0.4), `GET /healthz` (liveness: is the relay's loop
/// turning?) and `GET /readyz` (readiness: connected, listening, migrated).
///
/// A swift-service-lifecycle `Service`: run it in the daemon's `ServiceGroup`; graceful shutdown
/// stops accepting connections and lets requests in progress finish.
public struct OpsServer: Service {
    /// Where the server listens and how `/healthz` judges the loop.
    public struct Configuration: Sendable {
        /// The address to bind; the default keeps the endpoints off the network.
        public var host: String
        /// The TCP port; 0 picks a free one (``OpsServer/init(configuration:health:registry:logger:onServerRunning:)``'s
        /// `onServerRunning` learns which).
        public var port: Int
        /// `/healthz` answers 503 when the relay's loop has not turned for this long.
        public var livenessWindow: Duration

        public init(host: String = "127.0.0.1", port: Int = 9464, livenessWindow: Duration = .seconds(30)) {
            self.host = host
            self.port = port
            self.livenessWindow = livenessWindow
        }
    }

    /// The `Content-Type` of `/metrics`.
    public static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

    public let configuration: Configuration
    private let application: Application<RouterResponder<BasicRequestContext>>

    /// An ops server for a relay.
    ///
    /// - Parameters:
    ///   - health: the relay's ``RelayHealth`` (`relay.health`).
    ///   - registry: the registry that `Observability.makePrometheusFactory()` returned.
    ///   - onServerRunning: called with the bound port once the server accepts connections.
    public init(
        configuration: Configuration = Configuration(),
        health: RelayHealth,
        registry: PrometheusCollectorRegistry,
        logger: Logger,
        onServerRunning: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) {
        self.init(configuration: configuration, snapshot: { health.snapshot }, registry: registry, logger: logger, onServerRunning: onServerRunning)
    }

    /// An ops server that reads health through `snapshot` (for tests, or a health source other than a relay).
    public init(
        configuration: Configuration = Configuration(),
        snapshot: @escaping @Sendable () -> RelayHealth.Snapshot,
        registry: PrometheusCollectorRegistry,
        logger: Logger,
        onServerRunning: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        let startedAt = ContinuousClock.now
        let window = configuration.livenessWindow

        let router = Router(context: BasicRequestContext.self)
        router.get("/metrics") { _, _ -> Response in
            Self.response(status: .ok, contentType: Self.metricsContentType, body: ByteBuffer(bytes: registry.emitToBuffer()))
        }
        router.get("/healthz") { _, _ -> Response in
            let liveness = LoopLiveness(snapshot(), window: window, startedAt: startedAt, now: .now)
            return Self.response(ProbeResponse.liveness(liveness))
        }
        router.get("/readyz") { _, _ -> Response in
            Self.response(ProbeResponse.readiness(snapshot()))
        }

        self.application = Application(
            router: router,
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: nil
            ),
            onServerRunning: { channel in
                await onServerRunning(channel.localAddress?.port ?? configuration.port)
            },
            logger: logger
        )
    }

    public func run() async throws {
        try await application.run()
    }

    private static func response(_ probe: ProbeResponse) -> Response {
        var body = probe.body
        body += "\n"
        return response(
            status: HTTPResponse.Status(code: probe.status),
            contentType: "application/json",
            body: ByteBuffer(string: body)
        )
    }

    private static func response(status: HTTPResponse.Status, contentType: String, body: ByteBuffer) -> Response {
        Response(
            status: status,
            headers: [.contentType: contentType, .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: body)
        )
    }
}
