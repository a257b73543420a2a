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

    public init(
        url: String,
        method: String = "POST",
        headers: [HTTPHeader] = [],
        body: [UInt8] = [],
        timeout: Duration = .seconds(10),
        connectTimeout: Duration = .seconds(5),
        maxResponseBytes: Int = 4096
    ) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maxResponseBytes = maxResponseBytes
    }

    public init(
        url: String,
        method: String = "POST",
        headers: [(name: String, value: String)],
        body: [UInt8] = [],
        timeout: Duration = .seconds(10),
        connectTimeout: Duration = .seconds(5),
        maxResponseBytes: Int = 4096
    ) {
        self.init(
            url: url,
            method: method,
            headers: headers.map { HTTPHeader(name: $0.name, value: $0.value) },
            body: body,
            timeout: timeout,
            connectTimeout: connectTimeout,
            maxResponseBytes: maxResponseBytes
        )
    }
}

extension HTTPRequest {
    /// Rejects what curl would send verbatim or misread: control characters
    /// (header injection), schemes other than HTTP(S), empty limits.
    /// Messages name the offending header, never its value.
    func validate() throws(HTTPClientError) {
        if self.url.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F }) {
            throw HTTPClientError(code: .invalidURL, message: "the URL contains whitespace or control characters")
        }
        guard let scheme = Self.scheme(of: self.url) else {
            throw HTTPClientError(code: .invalidURL, message: "the URL has no scheme; use http:// or https://")
        }
        guard scheme == "http" || scheme == "https" else {
            throw HTTPClientError(
                code: .protocolNotAllowed,
                message: "scheme '\(scheme)' is not allowed; only http and https are"
            )
        }
        guard !self.method.isEmpty, self.method.utf8.allSatisfy(isTokenCharacter) else {
            throw HTTPClientError(code: .invalidRequest, message: "the method is not an HTTP token")
        }
        for header in self.headers {
            guard !header.name.isEmpty, header.name.utf8.allSatisfy(isTokenCharacter) else {
                throw HTTPClientError(code: .invalidRequest, message: "a header name is not an HTTP token")
            }
            if header.value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }) {
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

private func isASCIILetter(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
}

private func isASCIIDigit(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
}

/// RFC 9110 `tchar`.
private func isTokenCharacter(_ byte: UInt8) -> Bool {
    if isASCIILetter(byte) || isASCIIDigit(byte) { return true }
    return "!#$%&'*+-.^_`|~".utf8.contains(byte)
}
