/// Why ``HTTPClient/send(_:)`` produced no response.
///
/// `message` comes from libcurl's error buffer (or `curl_easy_strerror`) and
/// names hosts and ports at most: never header values or bodies.
public struct HTTPClientError: Error, CustomStringConvertible, Sendable {
    /// An extensible error category; compare with `==`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case timeout, connectFailed, dnsFailed, tlsFailed, protocolNotAllowed, invalidURL
            case invalidRequest, addressBlocked, sendFailed, receiveFailed, tooManyRedirects
            case cancelled, shutdown, other
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The total or connect timeout passed (`CURLE_OPERATION_TIMEDOUT`).
        public static let timeout = Code(.timeout)
        /// TCP connection refused or unreachable.
        public static let connectFailed = Code(.connectFailed)
        /// The host (or proxy) name did not resolve.
        public static let dnsFailed = Code(.dnsFailed)
        /// TLS handshake or certificate verification failed.
        public static let tlsFailed = Code(.tlsFailed)
        /// The URL's scheme is not allowed (see ``HTTPClient/Configuration/allowedSchemes``).
        public static let protocolNotAllowed = Code(.protocolNotAllowed)
        /// The URL could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// The request itself is malformed (method, header names or values, TLS
        /// options) or over a limit (body size).
        public static let invalidRequest = Code(.invalidRequest)
        /// The address connected to (or about to be) is refused by
        /// ``HTTPClient/Configuration/addressPolicy``; see ``HTTPClientError/refusal``.
        public static let addressBlocked = Code(.addressBlocked)
        /// Writing the request failed.
        public static let sendFailed = Code(.sendFailed)
        /// Reading the response failed, or the server sent nothing or garbage.
        public static let receiveFailed = Code(.receiveFailed)
        /// Not produced today: redirects are never followed.
        public static let tooManyRedirects = Code(.tooManyRedirects)
        /// The calling task was cancelled.
        public static let cancelled = Code(.cancelled)
        /// The client was shut down before the request completed.
        public static let shutdown = Code(.shutdown)
        /// Anything else libcurl reported; see ``HTTPClientError/curlCode``.
        public static let other = Code(.other)

        public var description: String {
            switch self.base {
            case .timeout: "timed out"
            case .connectFailed: "connection failed"
            case .dnsFailed: "name resolution failed"
            case .tlsFailed: "TLS failed"
            case .protocolNotAllowed: "protocol not allowed"
            case .invalidURL: "invalid URL"
            case .invalidRequest: "invalid request"
            case .addressBlocked: "address not allowed"
            case .sendFailed: "send failed"
            case .receiveFailed: "receive failed"
            case .tooManyRedirects: "too many redirects"
            case .cancelled: "cancelled"
            case .shutdown: "client shut down"
            case .other: "transfer failed"
            }
        }

        /// Whether trying the same request again later may succeed.
        public var isRetryable: Bool {
            switch self.base {
            case .timeout, .connectFailed, .dnsFailed, .tlsFailed, .sendFailed, .receiveFailed, .other:
                true
            case .protocolNotAllowed, .invalidURL, .invalidRequest, .addressBlocked, .tooManyRedirects,
                .cancelled, .shutdown:
                false
            }
        }
    }

    public var code: Code
    public var message: String
    /// libcurl's `CURLcode`, or 0 when the error did not come from libcurl.
    public var curlCode: Int
    /// Timeouts, connect, DNS, TLS, send and receive failures are retryable;
    /// invalid requests and refused schemes or addresses are not.
    public var isRetryable: Bool
    /// For ``Code/addressBlocked``: the address refused and the rule that refused it.
    public var refusal: AddressRefusal?

    public init(code: Code, message: String, curlCode: Int = 0, isRetryable: Bool? = nil, refusal: AddressRefusal? = nil) {
        self.code = code
        self.message = message
        self.curlCode = curlCode
        self.isRetryable = isRetryable ?? code.isRetryable
        self.refusal = refusal
    }

    /// For example "connection failed: Failed to connect to 127.0.0.1 port 9 after 0 ms: Couldn't connect to server".
    public var description: String { "\(self.code): \(self.message)" }
}
