import CCurl
import Logging
import Synchronization

/// An HTTP client over libcurl's multi interface, shared by many concurrent callers.
///
/// One multi handle, driven by its own thread, runs every transfer and keeps
/// idle connections for reuse (keep-alive, HTTP/2 multiplexing over TLS).
/// Redirects are returned, never followed; only http and https are allowed;
/// proxies come from ``Configuration/proxy`` alone, never the environment.
public final class HTTPClient: Sendable {
    private let loop: CurlMultiLoop
    private let nextRequestID = Atomic<UInt64>(0)

    /// `curl_global_init` must run once per process, before any other libcurl
    /// call; a static `let` initialiser runs exactly once, thread-safely.
    private static let globalInit: Void = {
        let code = ccurl_global_init_all()
        precondition(code == CURLE_OK, "curl_global_init failed: \(String(cString: curl_easy_strerror(code)))")
    }()

    public init(configuration: Configuration = .init(), logger: Logger) {
        Self.globalInit
        self.loop = CurlMultiLoop(configuration: configuration, logger: logger)
    }

    deinit {
        self.loop.shutdown()
    }

    /// Sends `request` and returns the response, whatever its status.
    ///
    /// Throws ``HTTPClientError``. Cancelling the calling task removes the
    /// transfer at once and throws ``HTTPClientError/Code/cancelled``.
    public func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        try await self.send(request, validating: true)
    }

    /// `validating: false` skips the Swift-side checks so tests can prove that
    /// libcurl's own options (allowed protocols, say) hold on their own.
    func send(_ request: HTTPRequest, validating: Bool) async throws -> HTTPResponse {
        if validating {
            try request.validate()
        }
        let pending = PendingRequest(
            id: self.nextRequestID.add(1, ordering: .relaxed).newValue,
            request: request
        )
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                if pending.install(continuation) {
                    self.loop.submit(pending)
                }
            }
        } onCancel: {
            if pending.cancel() {
                self.loop.cancel(pending.id)
            }
        }
    }

    /// Fails in-flight requests with ``HTTPClientError/Code/shutdown``, stops
    /// the loop thread and frees the multi handle. Idempotent; later calls to
    /// ``send(_:)`` fail with `.shutdown`.
    public func shutdown() {
        self.loop.shutdown()
    }
}
