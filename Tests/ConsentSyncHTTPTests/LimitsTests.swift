import ConsentSyncTestKit
import Testing

@testable import ConsentSyncHTTP

@Suite("Scheme policy, size limits and proxies")
struct LimitsTests {
    @Test("with only https allowed, an http:// request is refused before anything is sent")
    func httpsOnly() async throws {
        try await withReceiver { receiver in
            try await withClient(.init(allowedSchemes: ["https"])) { client in
                let error = await httpError { try await client.send(HTTPRequest(url: receiver.url)) }
                #expect(error?.code == .protocolNotAllowed)
                #expect(error?.isRetryable == false)
                #expect(error?.message == "scheme 'http' is not allowed (allowed: https); allow it with http.allowed_schemes")

                // libcurl's CURLOPT_PROTOCOLS_STR follows the same setting on its own.
                let unchecked = await httpError { try await client.send(HTTPRequest(url: receiver.url), validating: false) }
                #expect(unchecked?.code == .protocolNotAllowed)
                #expect(unchecked?.curlCode == 1)
            }
            try await Task.sleep(for: .milliseconds(50))
            #expect(receiver.requests.isEmpty)
            #expect(HTTPClient.Configuration().allowedSchemes == ["http", "https"])
        }
    }

    @Test("a body over the limit is refused before sending; one at the limit is sent")
    func requestBodyLimit() async throws {
        try await withReceiver { receiver in
            try await withClient(.init(maxRequestBodyBytes: 1024)) { client in
                let error = await httpError {
                    try await client.send(HTTPRequest(url: receiver.url, body: Array(repeating: 0x41, count: 1025)))
                }
                #expect(error?.code == .invalidRequest)
                #expect(error?.isRetryable == false)
                #expect(error?.message == "body of 1025 bytes exceeds the limit of 1024 bytes")
                try await Task.sleep(for: .milliseconds(50))
                #expect(receiver.requests.isEmpty)

                let response = try await client.send(HTTPRequest(url: receiver.url, body: Array(repeating: 0x41, count: 1024)))
                #expect(response.status == 200)
                #expect(receiver.requests.first?.body.count == 1024)
            }
            try await withClient { client in
                #expect(HTTPClient.Configuration().maxRequestBodyBytes == 1 << 20)
                let error = await httpError {
                    try await client.send(HTTPRequest(url: receiver.url, body: Array(repeating: 0, count: (1 << 20) + 1)))
                }
                #expect(error?.message == "body of 1048577 bytes exceeds the limit of 1048576 bytes")
            }
        }
    }

    @Test("64 KiB of response headers abort the transfer with a clear error; 8 KiB pass")
    func responseHeaderLimit() async throws {
        let kilobyte = String(repeating: "h", count: 1000)
        try await withReceiver(responder: { request in
            let count = request.headers["x-header-count"].flatMap { Int($0) } ?? 0
            return .status(200, headers: (0..<count).map { ("X-Filler-\($0)", kilobyte) }, body: "ok")
        }) { receiver in
            try await withClient { client in
                #expect(HTTPClient.Configuration().maxResponseHeaderBytes == 16 * 1024)
                let error = await httpError {
                    try await client.send(HTTPRequest(url: receiver.url, headers: [HTTPHeader(name: "X-Header-Count", value: "64")]))
                }
                #expect(error?.code == .receiveFailed)
                #expect(error?.curlCode == 23)  // CURLE_WRITE_ERROR: the header callback refused more
                #expect(error?.message == "the response headers exceed the limit of 16384 bytes; transfer aborted")

                let fine = try await client.send(HTTPRequest(url: receiver.url, headers: [HTTPHeader(name: "X-Header-Count", value: "8")]))
                #expect(fine.status == 200)
                #expect(fine.header("x-filler-7") == kilobyte)
                #expect(fine.body == Array("ok".utf8))
            }
            try await withClient(.init(maxResponseHeaderBytes: 4096)) { client in
                let error = await httpError {
                    try await client.send(HTTPRequest(url: receiver.url, headers: [HTTPHeader(name: "X-Header-Count", value: "8")]))
                }
                #expect(error?.message.contains("limit of 4096 bytes") == true)
            }
        }
    }

    @Test("a configured proxy carries the request")
    func configuredProxy() async throws {
        let proxy = try LoopbackListener()
        try await withClient(.init(proxy: "http://127.0.0.1:\(proxy.port)")) { client in
            let error = await httpError {
                // Long enough to connect to the proxy on a stalled machine, which the count below needs.
                try await client.send(HTTPRequest(url: "http://consent-sync.invalid/hook", timeout: .seconds(3)))
            }
            #expect(error?.code == .timeout)  // the listener accepts but never answers
        }
        #expect(proxy.acceptPending() == 1)
    }
}
