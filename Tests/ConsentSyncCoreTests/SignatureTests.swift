import ConsentSyncCore
import Foundation
import Testing

@Suite struct SignatureTests {
    /// The test vector published with the Standard Webhooks specification.
    @Test func matchesStandardWebhooksTestVector() throws {
        let secret = try SigningSecret(parsing: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        let signature = WebhookSigner.signature(
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: 1_614_265_330,
            body: Array(#"{"test": 2432232314}"#.utf8),
            secrets: [secret]
        )
        #expect(signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    @Test func oneSignaturePerSecretAndEitherVerifies() throws {
        let old = SigningSecret.generate()
        let new = SigningSecret.generate()
        let body = Array("{}".utf8)
        let header = WebhookSigner.signature(id: "msg_1", timestamp: 1_700_000_000, body: body, secrets: [old, new])
        #expect(header.split(separator: " ").count == 2)
        let now = Date(timeIntervalSince1970: 1_700_000_010)
        for secret in [old, new] {
            try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: header, body: body, secrets: [secret], now: now)
        }
        #expect(throws: WebhookVerificationError.noMatchingSignature) {
            try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: header, body: body, secrets: [SigningSecret.generate()], now: now)
        }
    }

    /// A relay that has not re-read its subscribers since an overlap ended still stops
    /// signing with the rotated-out secret at its expiry.
    @Test func anExpiredSecretIsNotSignedWithEvenBeforeTheSubscribersAreReread() {
        let old = SigningSecret.generate()
        let new = SigningSecret.generate()
        let expiry = Date(timeIntervalSince1970: 1_700_000_000)
        var subscriber = Subscriber(id: 1, name: "crm", url: "https://crm.example/hook", secrets: [old, new])
        subscriber.secretExpiries[old] = expiry
        #expect(subscriber.signingSecrets(at: expiry - 1) == [old, new])
        #expect(subscriber.signingSecrets(at: expiry) == [new])
        #expect(subscriber.signingSecrets(at: expiry + 3600) == [new])
        // Never nothing to sign with, even if every secret were past its expiry.
        subscriber.secretExpiries[new] = expiry
        #expect(subscriber.signingSecrets(at: expiry + 1) == [old, new])
    }

    @Test func verificationRefusesTamperingAndOldTimestamps() throws {
        let secret = SigningSecret.generate()
        let body = Array(#"{"a":1}"#.utf8)
        let header = WebhookSigner.signature(id: "msg_1", timestamp: 1_700_000_000, body: body, secrets: [secret])
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        #expect(throws: WebhookVerificationError.noMatchingSignature) {
            try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: header, body: Array(#"{"a":2}"#.utf8), secrets: [secret], now: now)
        }
        #expect(throws: WebhookVerificationError.noMatchingSignature) {
            try WebhookSigner.verify(id: "msg_2", timestamp: "1700000000", signatureHeader: header, body: body, secrets: [secret], now: now)
        }
        #expect(throws: WebhookVerificationError.timestampOutOfTolerance) {
            try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: header, body: body, secrets: [secret], now: now.addingTimeInterval(301))
        }
        #expect(throws: WebhookVerificationError.missingHeader("webhook-signature")) {
            try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: nil, body: body, secrets: [secret], now: now)
        }
    }

    /// Found by fuzzing: a combining mark after the separating space merged them into one
    /// Character and hid a valid signature.
    @Test func aCombiningMarkAfterASignatureDoesNotHideIt() throws {
        let secret = SigningSecret.generate()
        let body = Array("{}".utf8)
        let header = WebhookSigner.signature(id: "msg_1", timestamp: 1_700_000_000, body: body, secrets: [secret]) + " \u{594}junk"
        try WebhookSigner.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: header, body: body, secrets: [secret], now: Date(timeIntervalSince1970: 1_700_000_000))
    }

    @Test func generatedSecretsRoundTripAndNeverPrint() throws {
        let secret = SigningSecret.generate()
        #expect(secret.key.count == 32)
        #expect(secret.encoded.hasPrefix("whsec_"))
        #expect(try SigningSecret(parsing: secret.encoded) == secret)
        #expect(!"\(secret)".contains(String(secret.encoded.dropFirst(6).prefix(8))))
    }

    @Test(arguments: ["", "whsec_", "whsec_!!!notbase64", "whsec_c2hvcnQ="])
    func badSecretsAreRefused(_ text: String) {
        #expect(throws: SigningSecretError.self) { try SigningSecret(parsing: text) }
    }
}
