import ConsentSyncCore
import ConsentSyncHTTP
import ConsentSyncTestKit
import Foundation
import Testing

/// `consent-sync receive`, the reference receiver, as a consumer would run it.
@Suite struct ReceiveCommandTests {

    @Test func verifiesSignaturesDropsDuplicatesAndPrintsEvents() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("receive-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let secret = SigningSecret.generate()
        let secretFile = directory.appendingPathComponent("secret")
        try secret.encoded.write(to: secretFile, atomically: true, encoding: .utf8)

        // Port 0, and the port it printed: one picked beforehand may be taken by then.
        let receiver = try DaemonProcess(["receive", "--port", "0", "--secret-file", secretFile.path, "--name", "crm"], environment: [:])
        defer { receiver.signal(SIGTERM) }
        try await receiver.waitForLog("listening on")
        let line = receiver.stderr.split(separator: "\n").first { $0.contains("listening on") } ?? ""
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0.filter(\.isNumber)) })
        let client = HTTPClient(logger: RelayFixture.logger)
        defer { client.shutdown() }
        let url = "http://127.0.0.1:\(port)/hooks/consent"

        let change = ConsentChange(
            id: 7, eventID: UUID().uuidString, table: "consent_sync.consents", operation: .update, eventType: "consent.withdrawn",
            subject: "cust-9", purpose: "ads", status: "withdrawn", previousStatus: "granted", source: "test", changedAt: Date()
        )
        let body = EventEnvelope(source: "urn:test").body(for: change)
        let now = Int64(Date().timeIntervalSince1970)
        func request(_ message: WebhookMessage) -> HTTPRequest {
            HTTPRequest(url: url, headers: message.headers, body: message.body, timeout: .seconds(5))
        }

        // The receiver needs a moment to bind.
        var first: HTTPResponse?
        for _ in 0..<100 {
            if let response = try? await client.send(request(WebhookMessage(id: "msg_a", timestamp: now, body: body, secrets: [secret], userAgent: "t"))) {
                first = response
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(first?.status == 200)
        #expect(first.map { String(decoding: $0.body, as: UTF8.self) } == #"{"applied":true}"#)

        let duplicate = try await client.send(request(WebhookMessage(id: "msg_a", timestamp: now, body: body, secrets: [secret], userAgent: "t")))
        #expect(duplicate.status == 200)
        let forged = try await client.send(request(WebhookMessage(id: "msg_b", timestamp: now, body: body, secrets: [SigningSecret.generate()], userAgent: "t")))
        #expect(forged.status == 401)
        let stale = try await client.send(request(WebhookMessage(id: "msg_c", timestamp: now - 3600, body: body, secrets: [secret], userAgent: "t")))
        #expect(stale.status == 401)
        let garbage = try await client.send(request(WebhookMessage(id: "msg_d", timestamp: now, body: Array("not json".utf8), secrets: [secret], userAgent: "t")))
        #expect(garbage.status == 400)
        // A subscriber URL may be the root, as in http://127.0.0.1:9000/ (it answered 404).
        let atRoot = try await client.send(HTTPRequest(
            url: "http://127.0.0.1:\(port)/", headers: WebhookMessage(id: "msg_e", timestamp: now, body: body, secrets: [secret], userAgent: "t").headers,
            body: body, timeout: .seconds(5)
        ))
        #expect(atRoot.status == 200)

        // The child's output arrives through a pipe: wait for all six lines.
        let deadline = ContinuousClock.now + .seconds(10)
        while receiver.stdout.split(separator: "\n").count < 6 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let lines = receiver.stdout.split(separator: "\n").compactMap { line in
            try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        }
        let accepted = lines.filter { $0["type"] != nil }
        #expect(accepted.count == 3)
        #expect(accepted.first?["type"] == "consent.withdrawn")
        #expect(accepted.first?["subject"] == "cust-9")
        #expect(accepted.map { $0["duplicate"] } == ["false", "true", "false"])
        #expect(lines.filter { $0["rejected"] != nil }.count == 3)
        #expect(!receiver.stdout.contains(secret.encoded))
    }
}

