import CCurl
import Logging
import Synchronization

/// An HTTP client over libcurl's multi interface, shared by many concurrent callers.
///
/// One multi handle, driven by its own thread, runs every transfer and keeps
/// idle connections for reuse (keep-alive, HTTP/2 multiplexing over TLS).
/// Redirects are returned, never followed; only the schemes in
/// ``Configuration/allowedSchemes`` (http and https at most) are used;
/// proxies come from ``Configuration/proxy`` alone, never the environment;
/// ``Configuration/addressPolicy`` guards every connection against SSRF;
/// certificates are always verified.
public final class HTTPClient: Sendable {
    private let loop: CurlMultiLoop
    private let nextRequestID = Atomic<UInt64>(0)
    private let settings: Configuration
    private let currentAddressPolicy: Mutex<AddressPolicy?>

    /// `curl_global_init` must run once per process, before any other libcurl
    /// call; a static `let` initialiser runs exactly once, thread-safely.
    private static let globalInit: Void = {
        let code = ccurl_global_init_all()
        precondition(code == CURLE_OK, "curl_global_init failed: \(String(cString: curl_easy_strerror(code)))")
    }()

    public init(configuration: Configuration = .init(), logger: Logger) {
        Self.globalInit
        self.settings = configuration
        self.currentAddressPolicy = Mutex(configuration.addressPolicy)
        self.loop = CurlMultiLoop(configuration: configuration, logger: logger)
    }

    /// The configuration in force, with the current ``addressPolicy``; its
    /// ``Configuration/check(url:)`` checks a URL the way ``send(_:)`` would.
    public var configuration: Configuration {
        var configuration = self.settings
        configuration.addressPolicy = self.addressPolicy
        return configuration
    }

    /// The address policy applied to requests sent from now on.
    public var addressPolicy: AddressPolicy? {
        self.currentAddressPolicy.withLock { $0 }
    }

    /// Replaces the address policy (on a configuration reload, say). Applies
    /// to every request sent afterwards, including those that reuse a
    /// connection opened under the old policy: the connected address is checked
    /// again before each request.
    public func updateAddressPolicy(_ policy: AddressPolicy?) {
        self.currentAddressPolicy.withLock { $0 = policy }
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
        let pending = try self.pending(for: request, validating: validating)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                self.start(pending) { result in continuation.resume(with: result.mapError { $0 }) }
            }
        } onCancel: {
            self.cancel(pending)
        }
    }

    /// Checks `request` as ``send(_:)`` would and returns a handle that starts it without a
    /// task of its own (``HTTPRequestHandle/start(completion:)``). For callers that send many
    /// requests at once and would otherwise spend a task, and two thread hand-overs, on each.
    public func prepare(_ request: HTTPRequest) throws(HTTPClientError) -> HTTPRequestHandle {
        HTTPRequestHandle(client: self, pending: try self.pending(for: request, validating: true))
    }

    private func pending(for request: HTTPRequest, validating: Bool) throws(HTTPClientError) -> PendingRequest {
        let policy = self.addressPolicy
        if validating {
            try request.validate(self.settings)
            if let policy, self.settings.proxy != nil {
                // The proxy connects onward; only a literal address can be checked here.
                if let address = try CurlURL(request.url).literalAddress {
                    try HTTPClient.Configuration.check(address, against: policy)
                }
            }
        }
        return PendingRequest(
            id: self.nextRequestID.add(1, ordering: .relaxed).newValue,
            request: request,
            addressPolicy: policy
        )
    }

    fileprivate func start(_ pending: PendingRequest, completion: @escaping HTTPCompletion) {
        if pending.install(completion) {
            self.loop.submit(pending)
        }
    }

    fileprivate func cancel(_ pending: PendingRequest) {
        if pending.cancel() {
            self.loop.cancel(pending.id)
        }
    }

    /// Fails in-flight requests with ``HTTPClientError/Code/shutdown``, stops
    /// the loop thread and frees the multi handle. Idempotent; later calls to
    /// ``send(_:)`` fail with `.shutdown`.
    public func shutdown() {
        self.loop.shutdown()
    }
}

/// A request checked by ``HTTPClient/prepare(_:)``, to be started once and perhaps cancelled.
public struct HTTPRequestHandle: Sendable {
    fileprivate let client: HTTPClient
    fileprivate let pending: PendingRequest

    /// Sends the request. `completion` receives the response (whatever its status) or the
    /// error exactly once: on the client's loop thread, or on the thread that cancels it. Keep
    /// it short: it holds up every other transfer of the client while it runs.
    public func start(completion: @escaping HTTPCompletion) {
        client.start(pending, completion: completion)
    }

    /// Ends the request with ``HTTPClientError/Code/cancelled`` unless its outcome was already
    /// delivered (the completion then runs here, before this returns); before ``start(completion:)``,
    /// it makes the start deliver that error at once.
    public func cancel() {
        client.cancel(pending)
    }
}
