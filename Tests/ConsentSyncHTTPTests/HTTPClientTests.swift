import ConsentSyncTestKit
import Foundation
import Logging
import Synchronization
import Testing

@testable import ConsentSyncHTTP

@Suite("HTTPClient against a live receiver")
struct HTTPClientTests {
    @Test("POST headers and a binary body arrive intact; status, headers and body come back")
    func postRoundTrip() async throws {
        let payload: [UInt8] = [0x00, 0x7B, 0x00, 0xFF, 0x0D, 0x0A, 0x00, 0x7D, 0x00]
        try await withReceiver(responder: { _ in
            .status(202, headers: [("Retry-After", "120"), ("X-Reply", "yes")], body: "accepted")
        }) { receiver in
            try await withClient { client in
                let response = try await client.send(
                    HTTPRequest(
                        url: receiver.url,
                        headers: [
                            HTTPHeader(name: "Content-Type", value: "application/octet-stream"),
                            HTTPHeader(name: "X-Signature", value: "v1=abc123"),
                            HTTPHeader(name: "X-Empty", value: ""),
                        ],
                        body: payload
                    )
                )
                #expect(response.status == 202)
                #expect(response.header("retry-after") == "120")
                #expect(response.header("X-REPLY") == "yes")
                #expect(response.header("x-missing") == nil)
                #expect(response.body == Array("accepted".utf8))
                #expect(!response.bodyTruncated)
                #expect(response.httpVersion == "1.1")
                #expect(response.newConnections == 1)
                #expect(response.duration > .zero)

                let request = try #require(receiver.requests.first)
                #expect(receiver.requests.count == 1)
                #expect(request.method == "POST")
                #expect(request.path == "/hook")
                #expect(request.index == 0)
                #expect(request.body == payload)
                #expect(request.headers["content-length"] == "\(payload.count)")
                #expect(request.headers["content-type"] == "application/octet-stream")
                #expect(request.headers["x-signature"] == "v1=abc123")
                #expect(request.headers["x-empty"] == "")
                #expect(request.headers["expect"] == nil)
                #expect(request.headers["user-agent"] == "consent-sync")
            }
        }
    }

    @Test("curl's default form Content-Type is not sent; tuple headers and other methods work")
    func methodsAndDefaults() async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                _ = try await client.send(HTTPRequest(url: receiver.url, headers: [(name: "X-Tuple", value: "1")]))
                _ = try await client.send(HTTPRequest(url: receiver.url, method: "PUT", body: Array("{}".utf8)))
                _ = try await client.send(HTTPRequest(url: receiver.url, method: "GET"))
                let head = try await client.send(HTTPRequest(url: receiver.url, method: "HEAD", timeout: .seconds(2)))
                #expect(head.status == 200)
                #expect(head.body.isEmpty)
                // Easy handles are reused one after the other: nothing of an earlier request
                // (a header, HEAD's no-body mode, a method) may stick to the next.
                let after = try await client.send(HTTPRequest(url: receiver.url, body: Array("after head".utf8)))
                #expect(after.status == 200)
                let requests = try await receiver.waitForRequests(count: 5)
                #expect(requests.map(\.method) == ["POST", "PUT", "GET", "HEAD", "POST"])
                #expect(requests[0].headers["content-type"] == nil)
                #expect(requests[0].headers["content-length"] == "0")
                #expect(requests[0].headers["x-tuple"] == "1")
                #expect(requests.dropFirst().allSatisfy { $0.headers["x-tuple"] == nil })
                #expect(requests[1].bodyString == "{}")
                #expect(requests[2].body.isEmpty)
                #expect(requests[4].bodyString == "after head")
            }
        }
    }

    @Test("a large body is cut at maxResponseBytes and the transfer still completes")
    func truncatesLargeBody() async throws {
        let big = String(repeating: "0123456789", count: 20_000)
        try await withReceiver(responder: { _ in .status(200, body: big) }) { receiver in
            try await withClient { client in
                let cut = try await client.send(HTTPRequest(url: receiver.url, maxResponseBytes: 1000))
                #expect(cut.status == 200)
                #expect(cut.body == Array(big.utf8.prefix(1000)))
                #expect(cut.bodyTruncated)

                let none = try await client.send(HTTPRequest(url: receiver.url, maxResponseBytes: 0))
                #expect(none.body.isEmpty)
                #expect(none.bodyTruncated)

                let all = try await client.send(HTTPRequest(url: receiver.url, maxResponseBytes: 200_000))
                #expect(all.body.count == 200_000)
                #expect(!all.bodyTruncated)
            }
        }
    }

    @Test("a second request reuses the kept-alive connection")
    func keepAlive() async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                let first = try await client.send(HTTPRequest(url: receiver.url))
                let second = try await client.send(HTTPRequest(url: receiver.url))
                #expect(first.newConnections == 1)
                #expect(second.newConnections == 0)
            }
        }
    }

    @Test("the total timeout fails the request with a retryable .timeout")
    func totalTimeout() async throws {
        try await withReceiver(responder: { _ in .delayed(.seconds(30), .status(200)) }) { receiver in
            try await withClient { client in
                let clock = ContinuousClock()
                let start = clock.now
                let error = await httpError {
                    try await client.send(HTTPRequest(url: receiver.url, timeout: .milliseconds(300)))
                }
                #expect(error?.code == .timeout)
                #expect(error?.isRetryable == true)
                #expect(error?.curlCode == 28)
                // Ended by the 300 ms timeout, not by the answer after 30 s (wide: a loaded machine).
                #expect(clock.now - start < .seconds(15))
            }
        }
    }

    @Test("a refused connection fails with a retryable .connectFailed")
    func connectionRefused() async throws {
        let port = try unusedLoopbackPort()
        try await withClient { client in
            let error = await httpError {
                try await client.send(HTTPRequest(url: "http://127.0.0.1:\(port)/hook"))
            }
            #expect(error?.code == .connectFailed)
            #expect(error?.isRetryable == true)
            #expect(error?.description.hasPrefix("connection failed: ") == true)
            #expect(error?.description.contains("127.0.0.1") == true)
        }
    }

    @Test("a redirect is returned as it is, never followed")
    func redirectNotFollowed() async throws {
        try await withReceiver(responder: { _ in
            .status(302, headers: [("Location", "http://127.0.0.1/elsewhere")])
        }) { receiver in
            try await withClient { client in
                let response = try await client.send(HTTPRequest(url: receiver.url))
                #expect(response.status == 302)
                #expect(response.header("location") == "http://127.0.0.1/elsewhere")
                #expect(receiver.requests.count == 1)
            }
        }
    }

    @Test("schemes other than http and https are refused before anything is sent", arguments: [
        "ftp://127.0.0.1:PORT/hook", "file:///etc/passwd", "gopher://127.0.0.1:PORT/", "dict://127.0.0.1:PORT/",
        "127.0.0.1:PORT/hook", "//127.0.0.1:PORT/hook",
    ])
    func refusedSchemes(template: String) async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                let url = template.replacingOccurrences(of: "PORT", with: "\(receiver.port)")
                let error = await httpError { try await client.send(HTTPRequest(url: url)) }
                #expect(error?.code == .protocolNotAllowed || error?.code == .invalidURL)
                #expect(error?.isRetryable == false)
                try await Task.sleep(for: .milliseconds(50))
                #expect(receiver.requests.isEmpty)
            }
        }
    }

    @Test("libcurl's CURLOPT_PROTOCOLS_STR refuses other schemes on its own", arguments: ["ftp", "file", "gopher", "smtp"])
    func curlRefusesSchemes(scheme: String) async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                let url = scheme == "file" ? "file:///etc/passwd" : "\(scheme)://127.0.0.1:\(receiver.port)/hook"
                let error = await httpError { try await client.send(HTTPRequest(url: url), validating: false) }
                #expect(error?.code == .protocolNotAllowed)
                #expect(error?.curlCode == 1)
                #expect(error?.isRetryable == false)
                try await Task.sleep(for: .milliseconds(50))
                #expect(receiver.requests.isEmpty)
            }
        }
    }

    @Test("cancelling the calling task ends a hanging request promptly")
    func cancellation() async throws {
        try await withReceiver(responder: { _ in .hang }) { receiver in
            try await withClient { client in
                let task = Task { try await client.send(HTTPRequest(url: receiver.url, timeout: .seconds(30))) }
                try await receiver.waitForRequests(count: 1)
                try await Task.sleep(for: .milliseconds(200))
                let clock = ContinuousClock()
                let start = clock.now
                task.cancel()
                let result = await task.result
                #expect(clock.now - start < .seconds(10))  // the request's own timeout is 30 s
                #expect(throws: HTTPClientError.self) { try result.get() }
                if case .failure(let error as HTTPClientError) = result {
                    #expect(error.code == .cancelled)
                    #expect(!error.isRetryable)
                }
            }
        }
    }

    @Test("a task cancelled before sending sends nothing; the client stays usable")
    func cancelledBeforeSend() async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                let task = Task {
                    withUnsafeCurrentTask { $0?.cancel() }
                    return try await client.send(HTTPRequest(url: receiver.url))
                }
                let result = await task.result
                if case .failure(let error as HTTPClientError) = result {
                    #expect(error.code == .cancelled)
                } else {
                    Issue.record("expected .cancelled, got \(result)")
                }
                let response = try await client.send(HTTPRequest(url: receiver.url))
                #expect(response.status == 200)
                #expect(receiver.requests.count == 1)
            }
        }
    }

    @Test("a started request answers its completion once; cancelling it through its handle ends a hanging one")
    func handles() async throws {
        try await withReceiver(responder: { request in request.headers["x-hang"] != nil ? .hang : .status(204) }) { receiver in
            try await withClient { client in
                let answered = Outcomes()
                let done = try client.prepare(HTTPRequest(url: receiver.url, timeout: .seconds(30)))
                done.start { answered.add("done", $0) }
                let hanging = try client.prepare(
                    HTTPRequest(url: receiver.url, headers: [HTTPHeader(name: "X-Hang", value: "1")], timeout: .seconds(30))
                )
                hanging.start { answered.add("hanging", $0) }
                let notStarted = try client.prepare(HTTPRequest(url: receiver.url, timeout: .seconds(30)))
                notStarted.cancel()
                notStarted.start { answered.add("cancelled before its start", $0) }

                try await receiver.waitForRequests(count: 2)
                try await answered.wait(until: { $0.contains("done 204") })
                hanging.cancel()
                hanging.cancel()
                done.cancel()
                try await answered.wait(until: { $0.count == 3 })
                try await Task.sleep(for: .milliseconds(100))
                #expect(answered.lines.sorted() == ["cancelled before its start cancelled", "done 204", "hanging cancelled"])
                #expect(receiver.requests.count == 2, "the request cancelled before its start was never sent")
                let again = try await client.send(HTTPRequest(url: receiver.url))
                #expect(again.status == 204)
            }
        }
    }

    @Test("prepare refuses a request that would be refused by send, before anything is sent")
    func prepareChecks() async throws {
        try await withReceiver { receiver in
            try await withClient { client in
                #expect(throws: HTTPClientError.self) { try client.prepare(HTTPRequest(url: "ftp://127.0.0.1/")) }
                #expect(receiver.requests.isEmpty)
            }
        }
    }

    @Test("200 concurrent requests all succeed within the per-host connection limit")
    func concurrentRequests() async throws {
        try await withReceiver { receiver in
            try await withClient(.init(maxConnectionsPerHost: 16)) { client in
                let responses = try await withThrowingTaskGroup(of: HTTPResponse.self) { group in
                    for index in 0..<200 {
                        group.addTask {
                            try await client.send(
                                // 200 requests queue for 16 connections on a loaded machine: timeouts
                                // far beyond the defaults (10 s, 5 s to connect), as this tests the
                                // limit, not the speed.
                                HTTPRequest(
                                    url: receiver.url, headers: [HTTPHeader(name: "X-Index", value: "\(index)")],
                                    timeout: .seconds(60), connectTimeout: .seconds(60)
                                )
                            )
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(responses.count == 200)
                #expect(responses.allSatisfy { $0.status == 200 })
                #expect(responses.reduce(0) { $0 + $1.newConnections } <= 16)
                let seen = Set(receiver.requests.compactMap { $0.headers["x-index"] })
                #expect(seen.count == 200)
            }
        }
    }

    @Test("shutdown fails in-flight requests with .shutdown, and is idempotent")
    func shutdownFailsInFlight() async throws {
        try await withReceiver(responder: { _ in .hang }) { receiver in
            let client = HTTPClient(logger: .init(label: "consent-sync.test.http"))
            let tasks = (0..<5).map { _ in
                Task { try await client.send(HTTPRequest(url: receiver.url, timeout: .seconds(30))) }
            }
            try await receiver.waitForRequests(count: 5)
            let clock = ContinuousClock()
            let start = clock.now
            client.shutdown()
            #expect(clock.now - start < .seconds(10))  // the requests' own timeouts are 30 s
            for task in tasks {
                let result = await task.result
                if case .failure(let error as HTTPClientError) = result {
                    #expect(error.code == .shutdown)
                } else {
                    Issue.record("expected .shutdown, got \(result)")
                }
            }
            client.shutdown()
            let late = await httpError { try await client.send(HTTPRequest(url: receiver.url)) }
            #expect(late?.code == .shutdown)
            #expect(receiver.requests.count == 5)
        }
    }

    @Test("the strict address policy refuses loopback targets at connect time")
    func blocksPrivateAddresses() async throws {
        try await withReceiver { receiver in
            try await withClient(.init(addressPolicy: .strict)) { client in
                for url in [receiver.url, "http://localhost:\(receiver.port)/hook"] {
                    let error = await httpError { try await client.send(HTTPRequest(url: url)) }
                    #expect(error?.code == .addressBlocked)
                    #expect(error?.isRetryable == false)
                }
                #expect(receiver.requests.isEmpty)
            }
        }
    }

    @Test("requests that would inject headers are refused", arguments: [
        HTTPRequest(url: "http://127.0.0.1:1/", method: "PO ST"),
        HTTPRequest(url: "http://127.0.0.1:1/", headers: [HTTPHeader(name: "X Bad", value: "1")]),
        HTTPRequest(url: "http://127.0.0.1:1/", headers: [HTTPHeader(name: "X-Sig", value: "a\r\nX-Injected: 1")]),
        HTTPRequest(url: "http://127.0.0.1:1/", headers: [HTTPHeader(name: "", value: "1")]),
        HTTPRequest(url: "http://127.0.0.1:1/", timeout: .zero),
        HTTPRequest(url: "http://127.0.0.1:1/ evil"),
    ])
    func invalidRequests(request: HTTPRequest) async throws {
        try await withClient { client in
            let error = await httpError { try await client.send(request) }
            #expect(error?.code == .invalidRequest || error?.code == .invalidURL)
            #expect(error?.isRetryable == false)
            #expect(error?.description.contains("X-Injected") == false)
        }
    }
}

extension HTTPRequest: CustomTestStringConvertible {
    public var testDescription: String { "\(self.method) \(self.url) \(self.headers.map(\.name))" }
}


/// What a test's completions received, one line each ("label status" or "label error-code").
private final class Outcomes: Sendable {
    private let state = Mutex<[String]>([])

    func add(_ label: String, _ result: Result<HTTPResponse, HTTPClientError>) {
        let line = switch result {
        case .success(let response): "\(label) \(response.status)"
        case .failure(let error): "\(label) \(error.code)"
        }
        state.withLock { $0.append(line) }
    }

    var lines: [String] { state.withLock { $0 } }

    /// Polls until `condition` holds for the lines; throws after 30 s (a guard against a hang).
    func wait(until condition: ([String]) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while !condition(lines) {
            guard ContinuousClock.now < deadline else { throw CancellationError() }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}
