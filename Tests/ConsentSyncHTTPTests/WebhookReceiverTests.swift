import ConsentSyncHTTP
import ConsentSyncTestKit
import Testing

@Suite("WebhookReceiver fixture")
struct WebhookReceiverTests {
    @Test("records every request in arrival order, other paths too, and joins repeated headers")
    func recordsRequests() async throws {
        try await withReceiver(responder: { request in .status(request.index == 0 ? 503 : 200) }) { receiver in
            #expect(receiver.url == "http://127.0.0.1:\(receiver.port)/hook")
            try await withClient { client in
                let first = try await client.send(
                    HTTPRequest(
                        url: receiver.url,
                        headers: [HTTPHeader(name: "X-Twice", value: "a"), HTTPHeader(name: "x-twice", value: "b")],
                        body: Array("one".utf8)
                    )
                )
                let second = try await client.send(HTTPRequest(url: receiver.url, body: Array("two".utf8)))
                let elsewhere = try await client.send(HTTPRequest(url: "http://127.0.0.1:\(receiver.port)/other"))
                #expect([first.status, second.status, elsewhere.status] == [503, 200, 404])
            }
            let requests = try await receiver.waitForRequests(count: 3)
            #expect(requests.map(\.index) == [0, 1, 2])
            #expect(requests.map(\.path) == ["/hook", "/hook", "/other"])
            #expect(requests.map(\.bodyString) == ["one", "two", ""])
            #expect(requests[0].headers["x-twice"] == "a, b")
            #expect(requests[0].receivedAt <= requests[1].receivedAt)
        }
    }

    @Test("waitForRequests says how many arrived when it times out")
    func waitTimesOut() async throws {
        try await withReceiver { receiver in
            do {
                try await receiver.waitForRequests(count: 2, timeout: .milliseconds(50))
                Issue.record("expected a timeout")
            } catch let error as WebhookReceiverError {
                #expect(error.description.contains("0 arrived"))
            }
        }
    }

    @Test("a delayed reply arrives after its delay; stop() releases hanging replies at once")
    func delayedAndHanging() async throws {
        try await withClient { client in
            let receiver = try await WebhookReceiver.start { request in
                request.index == 0 ? .delayed(.milliseconds(150), .status(201, body: "late")) : .hang
            }
            let delayed = try await client.send(HTTPRequest(url: receiver.url))
            #expect(delayed.status == 201)
            #expect(delayed.body == Array("late".utf8))
            #expect(delayed.duration >= .milliseconds(150))

            let hanging = Task { try await client.send(HTTPRequest(url: receiver.url, timeout: .seconds(30))) }
            try await receiver.waitForRequests(count: 2)
            let clock = ContinuousClock()
            let start = clock.now
            await receiver.stop()
            #expect(clock.now - start < .seconds(10), "stop() must release a hanging reply long before its 30 s timeout")
            // The hanging request ends with the receiver's 503, or a closed connection.
            switch await hanging.result {
            case .success(let response): #expect(response.status == 503)
            case .failure(let error): #expect((error as? HTTPClientError)?.isRetryable == true)
            }
            await receiver.stop()
        }
    }
}
