/// Everything needed to send one attempt of one delivery: headers and body.
public struct WebhookMessage: Sendable {
    public var id: String
    public var timestamp: Int64
    public var body: [UInt8]
    public var headers: [(name: String, value: String)]

    /// Builds the Standard Webhooks headers around a CloudEvents body.
    /// - Parameters:
    ///   - id: `webhook-id`, stable across retries of one delivery.
    ///   - timestamp: seconds since 1970, the time of this attempt.
    public init(id: String, timestamp: Int64, body: [UInt8], secrets: [SigningSecret], userAgent: String) {
        self.id = id
        self.timestamp = timestamp
        self.body = body
        self.headers = [
            ("content-type", EventEnvelope.contentType),
            ("user-agent", userAgent),
            ("webhook-id", id),
            ("webhook-timestamp", String(timestamp)),
            ("webhook-signature", WebhookSigner.signature(id: id, timestamp: timestamp, body: body, secrets: secrets)),
        ]
    }
}
