import ConsentSyncEngine
import Foundation
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

    /// The receipts API: `GET /v1/subjects/{id}/receipts` with `Authorization: Bearer <token>`.
    public struct ReceiptsAPI: Sendable {
        public var token: String
        /// The subject's receipts as JSON.
        public var lookup: @Sendable (String) async throws -> [UInt8]

        public init(token: String, lookup: @escaping @Sendable (String) async throws -> [UInt8]) {
            self.token = token
            self.lookup = lookup
        }

        /// Compares in time independent of where the first difference is.
        func authorizes(_ header: String?) -> Bool {
            guard let header, header.hasPrefix("Bearer ") else { return false }
            let given = Array(header.dropFirst("Bearer ".count).utf8)
            let expected = Array(token.utf8)
            var difference = UInt8(given.count == expected.count ? 0 : 1)
            for index in 0..<expected.count {
                difference |= expected[index] ^ (index < given.count ? given[index] : 0)
            }
            return difference == 0
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
        receipts: ReceiptsAPI? = nil,
        logger: Logger,
        onServerRunning: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) {
        self.init(configuration: configuration, snapshot: { health.snapshot }, registry: registry, receipts: receipts, logger: logger, onServerRunning: onServerRunning)
    }

    /// An ops server that reads health through `snapshot` (for tests, or a health source other than a relay).
    public init(
        configuration: Configuration = Configuration(),
        snapshot: @escaping @Sendable () -> RelayHealth.Snapshot,
        registry: PrometheusCollectorRegistry,
        receipts: ReceiptsAPI? = nil,
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

        if let receipts {
            router.get("/v1/subjects/:id/receipts") { request, context -> Response in
                guard receipts.authorizes(request.headers[.authorization]) else {
                    var response = Self.error(.unauthorized, "a valid 'Authorization: Bearer <token>' header is required")
                    response.headers[.wwwAuthenticate] = "Bearer realm=\"consent-sync receipts\""
                    return response
                }
                guard let raw = context.parameters.get("id"), let subject = raw.removingPercentEncoding,
                      !subject.isEmpty, subject.utf8.count <= 2048 else {
                    return Self.error(.badRequest, "the subject id must be 1 to 2048 bytes, percent-encoded in the path")
                }
                do {
                    let body = try await receipts.lookup(subject)
                    return Self.response(status: .ok, contentType: "application/json", body: ByteBuffer(bytes: body))
                } catch {
                    logger.warning("receipts lookup failed", metadata: ["error": "\(error)"])
                    return Self.error(.serviceUnavailable, "the database is not reachable; try again")
                }
            }
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

    private static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        // Our own fixed messages: nothing in them needs JSON escaping.
        response(status: status, contentType: "application/json", body: ByteBuffer(string: "{\"error\":\"\(message)\"}\n"))
    }

    private static func response(status: HTTPResponse.Status, contentType: String, body: ByteBuffer) -> Response {
        Response(
            status: status,
            headers: [.contentType: contentType, .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: body)
        )
    }
}
