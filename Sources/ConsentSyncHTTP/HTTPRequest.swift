/// An HTTP request for ``HTTPClient/send(_:)``.
public struct HTTPRequest: Sendable {
    /// An absolute `http://` or `https://` URL.
    public var url: String
    /// The request method; a body is sent with any method.
    public var method: String
    /// Extra request headers. Values are never logged.
    public var headers: [HTTPHeader]
    public var body: [UInt8]
    /// Limit on the whole exchange, connecting included.
    public var timeout: Duration
    /// Limit on establishing the connection (TCP and TLS).
    public var connectTimeout: Duration
    /// How much of the response body to keep; the rest is read and dropped.
    public var maxResponseBytes: Int
    /// CA bundle and client certificate for an `https://` URL; nil: the
    /// system's CA store and no client certificate.
    public var tls: TLSOptions?
    /// Test seam: `CURLOPT_RESOLVE` entries ("host:port:address") that pin a
    /// host name to addresses without asking DNS.
    var resolveOverrides: [String] = []

    public init(
        url: String,
        method: String = "POST",
        headers: [HTTPHeader] = [],
        body: [UInt8] = [],
        timeout: Duration = .seconds(10),
        connectTimeout: Duration = .seconds(5),
        maxResponseBytes: Int = 4096,
        tls: TLSOptions? = nil
    ) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maxResponseBytes = maxResponseBytes
        self.tls = tls
    }

    public init(
        url: String,
        method: String = "POST",
        headers: [(name: String, value: String)],
        body: [UInt8] = [],
        timeout: Duration = .seconds(10),
        connectTimeout: Duration = .seconds(5),
        maxResponseBytes: Int = 4096,
        tls: TLSOptions? = nil
    ) {
        self.init(
            url: url,
            method: method,
            headers: headers.map { HTTPHeader(name: $0.name, value: $0.value) },
            body: body,
            timeout: timeout,
            connectTimeout: connectTimeout,
            maxResponseBytes: maxResponseBytes,
            tls: tls
        )
    }
}

extension HTTPRequest {
    /// Rejects what curl would send verbatim or misread: control characters
    /// (header injection), schemes `configuration` does not allow, bodies over
    /// its limit, empty limits. Messages name the offending header, never its value.
    func validate(_ configuration: HTTPClient.Configuration) throws(HTTPClientError) {
        if self.url.utf8.containsByte(where: { $0 < 0x21 || $0 == 0x7F }) {
            throw HTTPClientError(code: .invalidURL, message: "the URL contains whitespace or control characters")
        }
        guard let scheme = Self.scheme(of: self.url) else {
            throw HTTPClientError(code: .invalidURL, message: "the URL has no scheme; use http:// or https://")
        }
        try configuration.checkScheme(scheme)
        guard !self.method.isEmpty, !self.method.utf8.containsByte(where: { !isTokenCharacter($0) }) else {
            throw HTTPClientError(code: .invalidRequest, message: "the method is not an HTTP token")
        }
        for header in self.headers {
            guard !header.name.isEmpty, !header.name.utf8.containsByte(where: { !isTokenCharacter($0) }) else {
                throw HTTPClientError(code: .invalidRequest, message: "a header name is not an HTTP token")
            }
            if header.value.utf8.containsByte(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }) {
                throw HTTPClientError(
                    code: .invalidRequest,
                    message: "the value of header '\(header.name)' contains CR, LF or NUL"
                )
            }
        }
        guard self.timeout > .zero, self.connectTimeout > .zero else {
            throw HTTPClientError(code: .invalidRequest, message: "timeout and connectTimeout must be positive")
        }
        guard self.maxResponseBytes >= 0 else {
            throw HTTPClientError(code: .invalidRequest, message: "maxResponseBytes must not be negative")
        }
        guard self.body.count <= configuration.maxRequestBodyBytes else {
            throw HTTPClientError(
                code: .invalidRequest,
                message: "body of \(self.body.count) bytes exceeds the limit of \(configuration.maxRequestBodyBytes) bytes"
            )
        }
        try self.tls?.validate()
    }

    /// The lowercased RFC 3986 scheme, or nil when `url` does not start with one.
    static func scheme(of url: String) -> String? {
        guard let colon = url.utf8.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let scheme = url.utf8[..<colon]
        guard let first = scheme.first, isASCIILetter(first),
            scheme.allSatisfy({ isASCIILetter($0) || isASCIIDigit($0) || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") })
        else { return nil }
        return String(decoding: scheme, as: UTF8.self).lowercased()
    }
}

extension String.UTF8View {
    /// Whether a byte satisfies `predicate`: a loop over the string's contiguous bytes where it
    /// has them (native strings do). Stepping through the view's indices instead was about 1 µs
    /// of every request's checks (profiled in a drain).
    fileprivate func containsByte(where predicate: (UInt8) -> Bool) -> Bool {
        self.withContiguousStorageIfAvailable { $0.contains(where: predicate) } ?? self.contains(where: predicate)
    }
}

private func isASCIILetter(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
}

private func isASCIIDigit(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
}

/// RFC 9110 `tchar`.
private func isTokenCharacter(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"): true
    // ! # $ % & ' * + - . ^ _ ` | ~ (checked per header byte of every request: no string scan)
    case UInt8(ascii: "!"), UInt8(ascii: "#")...UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"),
        UInt8(ascii: "."), UInt8(ascii: "^")...UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
        true
    default: false
    }
}
