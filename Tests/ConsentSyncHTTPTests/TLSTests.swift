import ConsentSyncTestKit
import Testing

@testable import ConsentSyncHTTP

@Suite("TLS: verification always on, CA bundles and client certificates")
struct TLSTests {
    @Test("with the CA bundle and a client certificate, mutual TLS succeeds")
    func mutualTLS() async throws {
        try await withTLSReceiver { receiver, certificates in
            try await withClient { client in
                let tls = TLSOptions(
                    caBundlePath: certificates.path("ca.pem"),
                    clientCertificatePath: certificates.path("client-a.pem"),
                    clientKeyPath: certificates.path("client-a.key")
                )
                let response = try await client.send(tlsRequest(receiver.url, body: Array("{}".utf8), tls: tls))
                #expect(response.status == 200)
                #expect(response.body == Array("client-a".utf8))
                // The certificate names localhost too.
                let byName = try await client.send(
                    tlsRequest("https://localhost:\(receiver.port)/hook", tls: tls)
                )
                #expect(byName.status == 200)
            }
        }
    }

    @Test("without a client certificate the receiver refuses the handshake: .tlsFailed")
    func missingClientCertificate() async throws {
        try await withTLSReceiver { receiver, certificates in
            try await withClient { client in
                let error = await httpError {
                    try await client.send(tlsRequest(receiver.url, tls: TLSOptions(caBundlePath: certificates.path("ca.pem"))))
                }
                #expect(error?.code == .tlsFailed, "\(error.map { "\($0) (curl \($0.curlCode))" } ?? "no error")")
                #expect(error?.isRetryable == true)

                let rogue = TLSOptions(
                    caBundlePath: certificates.path("ca.pem"),
                    clientCertificatePath: certificates.path("rogue.pem"),
                    clientKeyPath: certificates.path("rogue.key")
                )
                let untrusted = await httpError { try await client.send(tlsRequest(receiver.url, tls: rogue)) }
                #expect(untrusted?.code == .tlsFailed, "\(untrusted.map { "\($0) (curl \($0.curlCode))" } ?? "no error")")
            }
        }
    }

    @Test("without the CA bundle, or with another CA, or for a name the certificate lacks, verification fails")
    func verificationFails() async throws {
        try await withTLSReceiver { receiver, certificates in
            try await withClient { client in
                let identity = (certificates.path("client-a.pem"), certificates.path("client-a.key"))
                for caBundle in [nil, certificates.path("rogue-ca.pem")] {
                    let tls = TLSOptions(caBundlePath: caBundle, clientCertificatePath: identity.0, clientKeyPath: identity.1)
                    let error = await httpError { try await client.send(tlsRequest(receiver.url, tls: tls)) }
                    #expect(error?.code == .tlsFailed)
                    #expect(error?.curlCode == 60)  // CURLE_PEER_FAILED_VERIFICATION
                }
                var wrongName = tlsRequest(
                    "https://wrong-name.test:\(receiver.port)/hook",
                    tls: TLSOptions(caBundlePath: certificates.path("ca.pem"), clientCertificatePath: identity.0, clientKeyPath: identity.1)
                )
                wrongName.resolveOverrides = ["wrong-name.test:\(receiver.port):127.0.0.1"]
                let error = await httpError { try await client.send(wrongName) }
                #expect(error?.code == .tlsFailed)
                #expect(error?.curlCode == 60)
                #expect(error?.message.contains("wrong-name.test") == true)
            }
        }
    }

    @Test("connections are never shared between different client certificates")
    func noSharingAcrossIdentities() async throws {
        try await withTLSReceiver { receiver, certificates in
            try await withClient { client in
                func options(_ name: String?) -> TLSOptions {
                    TLSOptions(
                        caBundlePath: certificates.path("ca.pem"),
                        clientCertificatePath: name.map { certificates.path("\($0).pem") },
                        clientKeyPath: name.map { certificates.path("\($0).key") }
                    )
                }
                let first = try await client.send(tlsRequest(receiver.url, tls: options("client-a")))
                #expect(first.body == Array("client-a".utf8))
                #expect(first.newConnections == 1)
                // Same identity: the kept-alive connection is reused, so reuse is possible here.
                let again = try await client.send(tlsRequest(receiver.url, tls: options("client-a")))
                #expect(again.body == Array("client-a".utf8))
                #expect(again.newConnections == 0)

                // No certificate: must not ride on client-a's connection, so it fails.
                let anonymous = await httpError { try await client.send(tlsRequest(receiver.url, tls: options(nil))) }
                #expect(anonymous?.code == .tlsFailed)

                // Another certificate: a new connection, presenting client-b.
                let other = try await client.send(tlsRequest(receiver.url, tls: options("client-b")))
                #expect(other.body == Array("client-b".utf8))
                #expect(other.newConnections == 1)

                let back = try await client.send(tlsRequest(receiver.url, tls: options("client-a")))
                #expect(back.body == Array("client-a".utf8))
            }
        }
    }

    @Test("TLS options that cannot work are refused before sending", arguments: [
        TLSOptions(clientKeyPath: "/tmp/key.pem"),
        TLSOptions(caBundlePath: ""),
        TLSOptions(clientCertificatePath: ""),
    ])
    func invalidOptions(tls: TLSOptions) async throws {
        try await withClient { client in
            let error = await httpError { try await client.send(tlsRequest("https://127.0.0.1:1/", tls: tls)) }
            #expect(error?.code == .invalidRequest)
            #expect(error?.isRetryable == false)
        }
    }

    @Test("an unreadable client certificate fails naming the problem")
    func unreadableCertificate() async throws {
        try await withTLSReceiver { receiver, certificates in
            try await withClient { client in
                let tls = TLSOptions(
                    caBundlePath: certificates.path("ca.pem"),
                    clientCertificatePath: certificates.path("missing.pem")
                )
                let error = await httpError { try await client.send(tlsRequest(receiver.url, tls: tls)) }
                #expect(error?.code == .tlsFailed)
                #expect(error?.curlCode == 58)  // CURLE_SSL_CERTPROBLEM
                #expect(error?.message.contains("missing.pem") == true)
            }
        }
    }
}

/// A request with room for a loaded machine: these tests check what fails and why, not how
/// fast. With the default 10 s, a handshake with the Python receiver once timed out while the
/// whole suite was starting in parallel (CI, 14:40), failing the test with curl's 28 instead
/// of the verification error it checks.
private func tlsRequest(_ url: String, body: [UInt8] = [], tls: TLSOptions?) -> HTTPRequest {
    HTTPRequest(url: url, body: body, timeout: .seconds(60), connectTimeout: .seconds(60), tls: tls)
}

extension TLSOptions: CustomTestStringConvertible {
    public var testDescription: String {
        "ca=\(self.caBundlePath ?? "-") cert=\(self.clientCertificatePath ?? "-") key=\(self.clientKeyPath ?? "-")"
    }
}
