import Testing

@testable import ConsentSyncHTTP

/// `Configuration.check(url:)`, for registering a webhook URL. Only
/// `localhost` is ever resolved (from /etc/hosts); every other case is
/// decided before any lookup.
@Suite("Registration-time URL check")
struct TargetCheckTests {
    static let production = HTTPClient.Configuration(addressPolicy: .strict, allowedSchemes: ["https"])

    @Test("accepted URLs report scheme, host, port and literal address")
    func accepted() async throws {
        let target = try await Self.production.check(url: "https://8.8.8.8/hooks/consent")
        #expect(target == HTTPTarget(scheme: "https", host: "8.8.8.8", port: 443, literalAddress: IPAddress("8.8.8.8")))
        let v6 = try await Self.production.check(url: "HTTPS://[2606:4700::1111]:8443/x?y=1")
        #expect(v6.host == "2606:4700::1111")
        #expect(v6.port == 8443)
        #expect(v6.literalAddress == IPAddress("2606:4700::1111"))
    }

    /// A refused URL, the error code, and text the message must contain.
    struct Refused: Sendable, CustomTestStringConvertible {
        var url: String
        var code: HTTPClientError.Code
        var says: String
        var testDescription: String { self.url }
    }

    @Test("refused URLs say why", arguments: [
        Refused(url: "http://hooks.example.com/x", code: .protocolNotAllowed, says: "scheme 'http' is not allowed (allowed: https); allow it with http.allowed_schemes"),
        Refused(url: "ftp://hooks.example.com/x", code: .protocolNotAllowed, says: "scheme 'ftp' is not allowed; only http and https can be"),
        Refused(url: "hooks.example.com/x", code: .invalidURL, says: "no scheme"),
        Refused(url: "https://", code: .invalidURL, says: "cannot be parsed"),
        Refused(url: "https://hooks.example.com /x", code: .invalidURL, says: "whitespace"),
        Refused(url: "https://169.254.169.254/latest/meta-data/", code: .addressBlocked, says: "169.254.169.254 is link-local (169.254.0.0/16); allow it with http.allow_networks"),
        Refused(url: "https://10.1.2.3:8443/x", code: .addressBlocked, says: "10.1.2.3 is private (10.0.0.0/8)"),
        Refused(url: "https://[::1]/x", code: .addressBlocked, says: "::1 is loopback"),
        Refused(url: "https://[::ffff:127.0.0.1]/x", code: .addressBlocked, says: "::ffff:127.0.0.1 is an IPv4-mapped address of 127.0.0.1, which is loopback"),
        Refused(url: "https://[64:ff9b::a00:1]/x", code: .addressBlocked, says: "a NAT64 address of 10.0.0.1, which is private"),
        Refused(url: "https://0x7f.1/x", code: .addressBlocked, says: "127.0.0.1 is loopback"),
        Refused(url: "https://2130706433/x", code: .addressBlocked, says: "127.0.0.1 is loopback"),
        Refused(url: "https://localhost/x", code: .addressBlocked, says: "localhost resolves to a refused address: 127.0.0.1 is loopback (127.0.0.0/8)"),
    ])
    func refused(_ testCase: Refused) async {
        let error: HTTPClientError?
        do {
            let target = try await Self.production.check(url: testCase.url)
            Issue.record("expected a refusal, got \(target)")
            error = nil
        } catch let caught {
            error = caught
        }
        #expect(error?.code == testCase.code)
        #expect(error?.isRetryable == false)
        #expect(error?.message.contains(testCase.says) == true, "\(error?.message ?? "no error")")
        if testCase.code == .addressBlocked {
            #expect(error?.refusal != nil)
        }
    }

    @Test("an allowlisted host name resolves and every address is reported")
    func allowlistedName() async throws {
        var configuration = Self.production
        configuration.addressPolicy = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128"])
        let target = try await configuration.check(url: "https://localhost:8443/x")
        #expect(target.literalAddress == nil)
        #expect(target.host == "localhost")
        #expect(target.port == 8443)
        #expect(target.resolvedAddresses.contains(IPAddress(ipv4: 127, 0, 0, 1)))
    }

    @Test("without an address policy nothing is resolved; with a proxy host names are left to the proxy")
    func noResolution() async throws {
        let open = HTTPClient.Configuration()
        let plain = try await open.check(url: "http://localhost/x")
        #expect(plain.resolvedAddresses.isEmpty)

        let proxied = HTTPClient.Configuration(proxy: "http://127.0.0.1:3128", addressPolicy: .strict)
        let viaProxy = try await proxied.check(url: "https://localhost/x")
        #expect(viaProxy.resolvedAddresses.isEmpty)
        #expect(throws: HTTPClientError.self) { try proxied.checkWithoutResolving(url: "https://10.0.0.1/x") }
    }

    @Test("the pure check needs no resolver and matches what send refuses")
    func pureCheck() throws {
        let target = try Self.production.checkWithoutResolving(url: "https://hooks.example.com/consent")
        #expect(target.host == "hooks.example.com")
        #expect(target.literalAddress == nil)
        #expect(target.resolvedAddresses.isEmpty)
        #expect(throws: HTTPClientError.self) { try Self.production.checkWithoutResolving(url: "http://hooks.example.com/") }
    }
}
