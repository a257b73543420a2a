import ConsentSyncCore
import Foundation
import Testing

@Suite struct EnvelopeTests {
    let change = ConsentChange(
        id: 42,
        eventID: "6f1c2d9e-0000-4000-8000-000000000001",
        table: "consent_sync.consents",
        operation: .update,
        eventType: "consent.withdrawn",
        subject: "customer-\"7\"\n",
        purpose: "marketing_email",
        status: "withdrawn",
        previousStatus: "granted",
        source: nil,
        changedAt: Date(timeIntervalSince1970: 1_764_400_000.123456),
        attributesJSON: #"{"channel": "web"}"#
    )

    @Test func isAValidCloudEvent() throws {
        let body = EventEnvelope(source: "urn:consent-sync:test").body(for: change)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        #expect(object["specversion"] as? String == "1.0")
        #expect(object["id"] as? String == change.eventID)
        #expect(object["source"] as? String == "urn:consent-sync:test")
        #expect(object["type"] as? String == "consent.withdrawn")
        #expect(object["subject"] as? String == "customer-\"7\"\n")
        #expect(object["time"] as? String == "2025-11-29T07:06:40.123456Z")
        #expect(object["datacontenttype"] as? String == "application/json")
        #expect(object["sequence"] as? String == "00000000000000000042")
        let data = try #require(object["data"] as? [String: Any])
        #expect(data["purpose"] as? String == "marketing_email")
        #expect(data["status"] as? String == "withdrawn")
        #expect(data["previous_status"] as? String == "granted")
        #expect(data["source"] is NSNull)
        #expect((data["attributes"] as? [String: Any])?["channel"] as? String == "web")
    }

    @Test(arguments: [
        "", "plain", "\"", "\\", "\"at the start", "at the end\n", "in \"the\" middle", "\u{1}\u{1f}\u{7f}\t\r",
        "caf\u{e9} \u{1F600} \u{2028}", "two\n\nin a row",
    ])
    func stringsComeBackAsTheyWere(_ subject: String) throws {
        var change = change
        change.subject = subject
        let body = EventEnvelope(source: "s").body(for: change)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        #expect(object["subject"] as? String == subject)
        // Control characters and DEL never appear raw in the body.
        #expect(!body.contains { $0 < 0x20 || $0 == 0x7F })
    }

    @Test func timestampsPadEveryField() {
        #expect(UTCTimestamp.format(seconds: 0, fraction: 5, digits: 6) == "1970-01-01T00:00:00.000005Z")
        #expect(UTCTimestamp.format(seconds: 3_661, fraction: 42, digits: 3) == "1970-01-01T01:01:01.042Z")
        #expect(UTCTimestamp.format(seconds: -1, fraction: 999, digits: 3) == "1969-12-31T23:59:59.999Z")
        #expect(UTCTimestamp.format(seconds: 253_402_300_800, fraction: 0, digits: 6) == "10000-01-01T00:00:00.000000Z")
    }

    @Test func sequenceComparesAsText() {
        var earlier = change
        earlier.id = 9
        #expect(earlier.sequence < change.sequence)
        #expect(change.sequence.count == 20)
    }

    @Test func headersCarryAStandardWebhooksSignature() throws {
        let secret = SigningSecret.generate()
        let body = EventEnvelope(source: "s").body(for: change)
        let message = WebhookMessage(id: "msg_x_1", timestamp: 1_700_000_000, body: body, secrets: [secret], userAgent: "consent-sync/test")
        let headers = Dictionary(uniqueKeysWithValues: message.headers.map { ($0.name, $0.value) })
        #expect(headers["content-type"] == "application/cloudevents+json")
        #expect(headers["webhook-id"] == "msg_x_1")
        #expect(headers["webhook-timestamp"] == "1700000000")
        try WebhookSigner.verify(
            id: headers["webhook-id"], timestamp: headers["webhook-timestamp"], signatureHeader: headers["webhook-signature"],
            body: body, secrets: [secret], now: Date(timeIntervalSince1970: 1_700_000_000)
        )
    }
}

@Suite struct SubscriberValidationTests {
    @Test(arguments: ["", "UPPER", "-lead", "has space", "semi;colon", String(repeating: "a", count: 64), "quote'"])
    func badNames(_ name: String) {
        #expect(throws: SubscriberValidationError.self) { try SubscriberValidation.validateName(name) }
    }

    @Test(arguments: ["crm", "e-mail.platform_2", "a"])
    func goodNames(_ name: String) throws {
        try SubscriberValidation.validateName(name)
    }

    @Test(arguments: [
        "", "relative/path", "ftp://example.com/x", "file:///etc/passwd", "https://user:pw@example.com/",
        "https://", "javascript:alert(1)", "https://exa mple.com/", "https://example.com/#frag",
        "https://example.com/" + String(repeating: "a", count: 2100),
    ])
    func badURLs(_ url: String) {
        #expect(throws: SubscriberValidationError.self) { try SubscriberValidation.validateURL(url) }
    }

    @Test(arguments: ["https://crm.example.com/hooks/consent", "http://127.0.0.1:8080/hook", "https://[::1]:8443/x?y=1"])
    func goodURLs(_ url: String) throws {
        try SubscriberValidation.validateURL(url)
    }

    @Test func eventTypesMustBeKnown() {
        #expect(throws: SubscriberValidationError.self) { try SubscriberValidation.validateEventTypes(["consent.granted", "consent.typo"]) }
    }

    @Test("timestamps match the Gregorian calendar in UTC, leap days and centuries included")
    func timestampsMatchTheCalendar() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        var generator = SystemRandomNumberGenerator()
        let fixed: [TimeInterval] = [0, 951_782_400, 951_868_799.999999, 4_107_542_400, 1_709_164_800.5, 253_402_300_799]
        let random = (0..<2_000).map { _ in TimeInterval(Int64.random(in: 0...253_402_300_799, using: &generator)) }
        for seconds in fixed + random {
            let date = Date(timeIntervalSince1970: seconds)
            let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: seconds.rounded(.down)))
            let expected = String(
                format: "%04d-%02d-%02dT%02d:%02d:%02d", parts.year!, parts.month!, parts.day!, parts.hour!, parts.minute!, parts.second!
            )
            #expect(EventEnvelope.timestamp(date).prefix(19) == Substring(expected), "\(seconds)")
        }
        #expect(EventEnvelope.timestamp(Date(timeIntervalSince1970: 951_868_799.999999)) == "2000-02-29T23:59:59.999999Z")
    }
}
