/// A complete HTTP response. Redirects are returned as they are, never followed.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Headers of the final response (interim 1xx responses are dropped), in wire order.
    public var headers: [HTTPHeader]
    /// The first ``HTTPRequest/maxResponseBytes`` bytes of the body.
    public var body: [UInt8]
    /// True when the body was longer than what was kept.
    public var bodyTruncated: Bool
    /// The whole exchange, from libcurl's `CURLINFO_TOTAL_TIME_T`.
    public var duration: Duration
    /// "1.0", "1.1", "2" or "3".
    public var httpVersion: String
    /// Connections opened for this request: 0 when a kept-alive one was reused.
    public var newConnections: Int

    public init(
        status: Int,
        headers: [HTTPHeader] = [],
        body: [UInt8] = [],
        bodyTruncated: Bool = false,
        duration: Duration = .zero,
        httpVersion: String = "1.1",
        newConnections: Int = 0
    ) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyTruncated = bodyTruncated
        self.duration = duration
        self.httpVersion = httpVersion
        self.newConnections = newConnections
    }

    /// The value of the first header called `name`, compared case-insensitively.
    public func header(_ name: String) -> String? {
        self.headers.firstValue(named: name)
    }
}
