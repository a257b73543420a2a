import ConsentSyncCore
import Foundation
import Testing

/// Encryption of signing secrets at rest, without a database.
@Suite struct SecretKeyringTests {
    static func keyFile(_ bytes: [UInt8]) -> [UInt8] {
        Array((Data(bytes).base64EncodedString() + "\n").utf8)
    }

    @Test func sealedSecretsRoundTripAndHideTheKeyMaterial() throws {
        let key = MasterKey.generate()
        let keyring = SecretKeyring(current: key)
        let secret = SigningSecret.generate()
        let stored = try keyring.seal(secret, subscriberID: 7)
        #expect(stored.hasPrefix("enc:v1:\(key.id):"))
        #expect(!stored.contains("whsec_"))
        #expect(!stored.contains(Data(secret.key).base64EncodedString()))
        #expect(try keyring.open(stored, subscriberID: 7) == secret)
        // A fresh nonce each time: the same secret never gives the same text.
        #expect(try keyring.seal(secret, subscriberID: 7) != stored)
        #expect(keyring.isSealedWithCurrentKey(stored))
        #expect(SecretKeyring.keyID(of: stored) == key.id)
    }

    @Test func theKeyIDIsTheFirstEightHexDigitsOfSHA256() throws {
        // SHA-256 of 32 zero bytes is 66687aadf862bd77...
        let zero = try MasterKey(bytes: [UInt8](repeating: 0, count: 32))
        #expect(zero.id == "66687aad")
        #expect(zero.description == "master key 66687aad")
        let generated = MasterKey.generate()
        #expect(generated.id.count == 8)
        #expect(generated.id.allSatisfy { $0.isHexDigit && !$0.isUppercase })
        #expect(!"\(generated)".contains(generated.fileContents.trimmingCharacters(in: .newlines)))
    }

    @Test func aSecretUnderAnotherKeySaysWhichKeyIsNeeded() throws {
        let old = MasterKey.generate()
        let new = MasterKey.generate()
        let stored = try SecretKeyring(current: old).seal(.generate(), subscriberID: 1)
        let error = try #require(throws: SecretKeyringError.self) {
            try SecretKeyring(current: new).open(stored, subscriberID: 1)
        }
        #expect(error.code == .keyNotConfigured)
        #expect(error.keyID == old.id)
        let message = error.about(subscriber: "crm").description
        #expect(message.contains("subscriber 'crm' has a secret encrypted with key \(old.id), which is not configured"), "\(message)")
        #expect(message.contains("configured: \(new.id)"))
        #expect(message.contains("secrets.master_key_file"))

        let none = try #require(throws: SecretKeyringError.self) { try SecretKeyring.plaintextOnly.open(stored, subscriberID: 1) }
        #expect(none.description.contains("no master key is configured"), "\(none)")
    }

    @Test func previousKeysDecryptButOnlyTheCurrentOneEncrypts() throws {
        let old = MasterKey.generate()
        let new = MasterKey.generate()
        let secret = SigningSecret.generate()
        let stored = try SecretKeyring(current: old).seal(secret, subscriberID: 3)
        let rotating = SecretKeyring(current: new, previous: [old])
        #expect(try rotating.open(stored, subscriberID: 3) == secret)
        #expect(!rotating.isSealedWithCurrentKey(stored))
        let resealed = try rotating.seal(secret, subscriberID: 3)
        #expect(SecretKeyring.keyID(of: resealed) == new.id)
        #expect(try SecretKeyring(current: new).open(resealed, subscriberID: 3) == secret)
        #expect(rotating.keyIDs == [new.id, old.id])
        // The current key listed as previous too counts once.
        #expect(SecretKeyring(current: new, previous: [new, old]).keyIDs == [new.id, old.id])
    }

    @Test func aCiphertextMovedToAnotherSubscriberDoesNotDecrypt() throws {
        let key = MasterKey.generate()
        let keyring = SecretKeyring(current: key)
        let stored = try keyring.seal(.generate(), subscriberID: 1)
        let error = try #require(throws: SecretKeyringError.self) { try keyring.open(stored, subscriberID: 2) }
        #expect(error.code == .decryptionFailed)
        #expect(error.about(subscriber: "email").description.contains("subscriber 'email' has a secret that does not decrypt with key \(key.id)"))
    }

    @Test func aTamperedCiphertextDoesNotDecrypt() throws {
        let keyring = SecretKeyring(current: .generate())
        let stored = try keyring.seal(.generate(), subscriberID: 1)
        let prefixLength = "enc:v1:12345678:".count
        var combined = try #require(Data(base64Encoded: String(stored.dropFirst(prefixLength))))
        for index in [0, 12, combined.count - 1] {  // nonce, ciphertext, tag
            var altered = combined
            altered[index] ^= 0x01
            let tampered = String(stored.prefix(prefixLength)) + altered.base64EncodedString()
            let error = try #require(throws: SecretKeyringError.self) { try keyring.open(tampered, subscriberID: 1) }
            #expect(error.code == .decryptionFailed)
        }
        combined.removeLast()
        let truncated = String(stored.prefix(prefixLength)) + combined.base64EncodedString()
        #expect(throws: SecretKeyringError.self) { try keyring.open(truncated, subscriberID: 1) }
    }

    @Test(arguments: ["", "whsec", "enc:v2:12345678:AAAA", "enc:v1:1234:AAAA", "enc:v1:12345678:not base64!", "enc:v1:12345678:AAAA", "plain text"])
    func malformedStoredSecretsAreRefused(_ stored: String) throws {
        let error = try #require(throws: SecretKeyringError.self) {
            try SecretKeyring(current: .generate()).open(stored, subscriberID: 1)
        }
        #expect(error.code == .malformedSecret)
        #expect(error.about(subscriber: "crm").description.contains("rotate-secret crm"))
    }

    @Test func plaintextIsStoredOnlyWhenAllowedAndAlwaysRead() throws {
        let secret = SigningSecret.generate()
        let refused = try #require(throws: SecretKeyringError.self) {
            try SecretKeyring(current: nil).seal(secret, subscriberID: 1)
        }
        #expect(refused.code == .noMasterKey)
        #expect(refused.description.contains("openssl rand -base64 32"))
        #expect(refused.description.contains("secrets.allow_plaintext"))

        let plain = try SecretKeyring.plaintextOnly.seal(secret, subscriberID: 1)
        #expect(plain == secret.encoded)
        // Secrets stored before encryption still work with a keyring that has a key.
        #expect(try SecretKeyring(current: .generate()).open(plain, subscriberID: 1) == secret)
        #expect(!SecretKeyring(current: .generate()).isSealedWithCurrentKey(plain))
        // A key wins over allowsPlaintext.
        let sealed = try SecretKeyring(current: .generate(), allowsPlaintext: true).seal(secret, subscriberID: 1)
        #expect(sealed.hasPrefix("enc:v1:"))
    }

    @Test func keyFilesHoldBase64OrHex() throws {
        let bytes = (0..<32).map { UInt8($0 * 7 % 256) }
        let base64 = try MasterKey(fileContents: Self.keyFile(bytes), path: "/k")
        let hex = try MasterKey(fileContents: Array((bytes.map { String(format: "%02x", $0) }.joined() + "\n").utf8), path: "/k")
        let upperHex = try MasterKey(fileContents: Array(bytes.map { String(format: "%02X", $0) }.joined().utf8), path: "/k")
        let direct = try MasterKey(bytes: bytes)
        #expect(base64.id == direct.id)
        #expect(hex.id == direct.id)
        #expect(upperHex.id == direct.id)
        let generated = MasterKey.generate()
        #expect(try MasterKey(fileContents: Array(generated.fileContents.utf8), path: "/k").id == generated.id)
    }

    @Test(arguments: [
        ("empty", "", "is empty"),
        ("blank", " \n", "is empty"),
        ("16 bytes of base64", Data(repeating: 1, count: 16).base64EncodedString(), "16-byte key, too short"),
        ("48 bytes of base64", Data(repeating: 1, count: 48).base64EncodedString(), "48-byte key, too long"),
        ("not base64", "this is not a key at all!", "neither base64 nor 64 hex digits"),
        ("a whsec_ secret", "whsec_" + Data(repeating: 1, count: 32).base64EncodedString(), "neither base64 nor 64 hex digits"),
        ("63 hex digits", String(repeating: "a", count: 63), "neither base64 nor 64 hex digits"),
    ])
    func badKeyFilesSayWhatIsWrongWithoutShowingTheContents(name: String, contents: String, expected: String) throws {
        let error = try #require(throws: SecretKeyringError.self) {
            try MasterKey(fileContents: Array(contents.utf8), path: "/etc/consent-sync/master.key")
        }
        #expect(error.code == .invalidKey)
        let message = error.description
        #expect(message.contains("'/etc/consent-sync/master.key'"), "\(name): \(message)")
        #expect(message.contains(expected), "\(name): \(message)")
        #expect(message.contains("openssl rand -base64 32 > /etc/consent-sync/master.key"), "\(name): \(message)")
        let trimmed = contents.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.count > 8 { #expect(!message.contains(trimmed), "\(name): the key file's contents are in the message") }
    }

    @Test func keysOfTheWrongLengthAreRefused() {
        #expect(throws: SecretKeyringError.self) { try MasterKey(bytes: [UInt8](repeating: 0, count: 31)) }
        #expect(throws: SecretKeyringError.self) { try MasterKey(bytes: [UInt8](repeating: 0, count: 33)) }
    }
}
