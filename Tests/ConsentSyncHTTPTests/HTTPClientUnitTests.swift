import CCurl
import Testing

@testable import ConsentSyncHTTP

@Suite("HTTP client pure parts")
struct HTTPClientUnitTests {
    @Test("curl codes map to error categories", arguments: [
        (28, HTTPClientError.Code.timeout, true),
        (7, .connectFailed, true),
        (6, .dnsFailed, true),
        (5, .dnsFailed, true),
        (35, .tlsFailed, true),
        (60, .tlsFailed, true),
        (1, .protocolNotAllowed, false),
        (3, .invalidURL, false),
        (55, .sendFailed, true),
        (56, .receiveFailed, true),
        (52, .receiveFailed, true),
        (47, .tooManyRedirects, false),
        (2, .other, true),
    ])
    func curlCodeMapping(curlCode: Int, code: HTTPClientError.Code, retryable: Bool) {
        #expect(HTTPClientError.Code.forCurlCode(curlCode) == code)
        #expect(HTTPClientError(code: code, message: "m", curlCode: curlCode).isRetryable == retryable)
    }

    @Test("a TLS alert on the first read or write is a TLS failure", arguments: [
        (56, "OpenSSL SSL_read: OpenSSL/3.0.19: error:0A00045C:SSL routines::tlsv13 alert certificate required, errno 0", HTTPClientError.Code.tlsFailed),
        (55, "OpenSSL SSL_write: error:0A000418:SSL routines::tlsv1 alert unknown ca, errno 0", .tlsFailed),
        (56, "Recv failure: Connection reset by peer", .receiveFailed),
        (55, "Send failure: Broken pipe", .sendFailed),
        (7, "SSL routines alert but a connect failure", .connectFailed),
    ])
    func tlsAlerts(curlCode: Int, message: String, code: HTTPClientError.Code) {
        let error = HTTPClientError(curlCode: CURLcode(rawValue: UInt32(curlCode)), errorBuffer: message)
        #expect(error.code == code)
        #expect(error.message == message)
    }

    @Test func errorDescription() {
        let error = HTTPClientError(code: .connectFailed, message: "Failed to connect to 127.0.0.1 port 9", curlCode: 7)
        #expect(error.description == "connection failed: Failed to connect to 127.0.0.1 port 9")
        #expect(HTTPClientError.Code.shutdown.description == "client shut down")
    }

    @Test("durations become whole milliseconds, rounded up, never 0", arguments: [
        (Duration.milliseconds(300), 300),
        (.seconds(10), 10_000),
        (.microseconds(1), 1),
        (.nanoseconds(1_500_000), 2),
        (.seconds(Int64.max), Int(Int32.max)),
    ])
    func curlMilliseconds(duration: Duration, milliseconds: Int) {
        #expect(duration.curlMilliseconds == milliseconds)
    }

    @Test("URL schemes", arguments: [
        ("http://x", "http"), ("HTTPS://x", "https"), ("ftp://x", "ftp"), ("file:/etc", "file"),
        ("127.0.0.1:80/x", nil), ("//x", nil), ("x", nil),
    ] as [(String, String?)])
    func schemes(url: String, scheme: String?) {
        #expect(HTTPRequest.scheme(of: url) == scheme)
    }

    @Test("only the final response's head is kept")
    func finalHeadOnly() {
        var parser = ResponseHeadParser()
        for line in [
            "HTTP/1.1 100 Continue\r\n", "X-Interim: 1\r\n", "\r\n",
            "HTTP/1.1 503 Service Unavailable\r\n", "Retry-After: 5\r\n", "X-Folded: a\r\n", "\tb\r\n",
            "Set-Cookie: one\r\n", "Set-Cookie: two\r\n", "\r\n",
            "X-Trailer: late\r\n",
        ] {
            parser.consume(Substring(line))
        }
        #expect(
            parser.headers == [
                HTTPHeader(name: "Retry-After", value: "5"),
                HTTPHeader(name: "X-Folded", value: "a b"),
                HTTPHeader(name: "Set-Cookie", value: "one"),
                HTTPHeader(name: "Set-Cookie", value: "two"),
            ]
        )
    }

    @Test("a header splits at its first colon byte, whatever marks come before it")
    func colonByte() {
        var parser = ResponseHeadParser()
        for line in ["HTTP/1.1 429 Too Many Requests\r\n", "retry-after\u{0604}: 120: x\r\n", "Retry-After: 5\r\n", "\r\n"] {
            parser.consume(Substring(line))
        }
        #expect(parser.headers == [
            HTTPHeader(name: "retry-after\u{0604}", value: "120: x"),
            HTTPHeader(name: "Retry-After", value: "5"),
        ])
    }

    @Test("the strict address policy refuses non-public addresses", arguments: [
        "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "::1", "fe80::1", "fc00::1", "fd12::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::",
    ])
    func refusedAddresses(address: String) throws {
        let ip = try #require(IPAddress(address))
        #expect(!AddressPolicy.strict.verdict(for: ip).isAllowed)
    }

    @Test("the strict address policy lets public addresses through", arguments: [
        "93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:8.8.8.8",
    ])
    func allowedAddresses(address: String) throws {
        let ip = try #require(IPAddress(address))
        #expect(AddressPolicy.strict.verdict(for: ip) == .publicAddress)
    }

    @Test func headerLookupIsCaseInsensitive() {
        let response = HTTPResponse(status: 429, headers: [HTTPHeader(name: "Retry-After", value: "7")])
        #expect(response.header("retry-after") == "7")
        #expect(response.header("RETRY-AFTER") == "7")
        #expect(response.header("retry-afte") == nil)
        #expect("\(HTTPHeader(name: "X-Signature", value: "secret"))" == "X-Signature: <redacted>")
    }
}
