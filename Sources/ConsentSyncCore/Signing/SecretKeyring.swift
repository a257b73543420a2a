import Crypto
import Foundation

/// Encrypts subscribers' signing secrets for the database and decrypts them for signing.
///
/// A stored secret is `enc:v1:<key id>:<base64 of nonce, ciphertext and tag>`: AES-256-GCM
/// under the ``current`` master key with a random 96-bit nonce, authenticated together with
/// the subscriber's id, so that a ciphertext copied to another subscriber does not decrypt.
/// A database dump alone therefore reveals no secret.
///
/// Secrets stored before encryption existed (or with `secrets.allow_plaintext`) are plain
/// `whsec_…` text; they are still read, and `consent-sync keys rotate` encrypts them.
///
/// Decryption tries every configured key whose id matches, current and ``previous``, so
/// that master keys can be rotated without downtime: configure the new key as current and
/// the old one as previous, re-encrypt (`consent-sync keys rotate`), then drop the old one.
public struct SecretKeyring: Sendable {
    /// The key new secrets are encrypted with; `nil` when none is configured.
    public let current: MasterKey?
    /// Keys only decrypted with, during a master-key rotation.
    public let previous: [MasterKey]
    /// Whether, without a ``current`` key, secrets may be stored unencrypted.
    public let allowsPlaintext: Bool

    /// The prefix of an encrypted stored secret.
    public static let encryptedPrefix = "enc:v1:"

    public init(current: MasterKey?, previous: [MasterKey] = [], allowsPlaintext: Bool = false) {
        self.current = current
        // The current key counts once, as current.
        var seen: Set<String> = current.map { [$0.id] } ?? []
        self.previous = previous.filter { seen.insert($0.id).inserted }
        self.allowsPlaintext = allowsPlaintext
    }

    /// No key: stores `whsec_…` text and reads only that. For tests and for
    /// `secrets.allow_plaintext: true`.
    public static let plaintextOnly = SecretKeyring(current: nil, allowsPlaintext: true)

    /// The ids of every configured key, current first.
    public var keyIDs: [String] {
        (current.map { [$0] } ?? []).map(\.id) + previous.map(\.id)
    }

    /// The text to store for `secret` of the subscriber with id `subscriberID`: encrypted with
    /// the current key, or (only without one, and only when ``allowsPlaintext``) `whsec_…`.
    public func seal(_ secret: SigningSecret, subscriberID: Int64) throws(SecretKeyringError) -> String {
        guard let current else {
            guard allowsPlaintext else { throw SecretKeyringError(code: .noMasterKey) }
            return secret.encoded
        }
        let box: AES.GCM.SealedBox
        do {
            box = try AES.GCM.seal(secret.key, using: current.key, nonce: AES.GCM.Nonce(), authenticating: Self.associatedData(subscriberID: subscriberID))
        } catch {
            // Sealing with a valid 256-bit key and a fresh nonce does not fail.
            preconditionFailure("AES-GCM sealing failed")
        }
        // A random 12-byte nonce always gives the combined form.
        let combined = box.combined!
        return Self.encryptedPrefix + current.id + ":" + combined.base64EncodedString()
    }

    /// The secret stored as `stored` for the subscriber with id `subscriberID`.
    ///
    /// - Throws: ``SecretKeyringError`` saying which key is missing, or that the ciphertext
    ///   does not authenticate (altered, or another subscriber's); never a wrong secret.
    public func open(_ stored: String, subscriberID: Int64) throws(SecretKeyringError) -> SigningSecret {
        switch try Self.parse(stored) {
        case .plaintext(let text):
            do {
                return try SigningSecret(parsing: text)
            } catch {
                throw SecretKeyringError(code: .malformedSecret, detail: error.reason)
            }
        case .encrypted(let keyID, let combined):
            let candidates = ([current].compactMap { $0 } + previous).filter { $0.id == keyID }
            guard !candidates.isEmpty else {
                throw SecretKeyringError(code: .keyNotConfigured, keyID: keyID, configuredKeyIDs: keyIDs)
            }
            let associatedData = Self.associatedData(subscriberID: subscriberID)
            for key in candidates {
                guard let box = try? AES.GCM.SealedBox(combined: combined),
                      let plaintext = try? AES.GCM.open(box, using: key.key, authenticating: associatedData)
                else { continue }
                return SigningSecret(key: Array(plaintext))
            }
            throw SecretKeyringError(code: .decryptionFailed, keyID: keyID, configuredKeyIDs: keyIDs)
        }
    }

    /// True when `stored` is encrypted with the current key (`keys rotate` leaves it alone
    /// once it also decrypts).
    public func isSealedWithCurrentKey(_ stored: String) -> Bool {
        guard let current, case .encrypted(let keyID, _)? = try? Self.parse(stored) else { return false }
        return keyID == current.id
    }

    /// The id of the key `stored` is encrypted with; `nil` for a plaintext or unreadable one.
    public static func keyID(of stored: String) -> String? {
        guard case .encrypted(let keyID, _)? = try? parse(stored) else { return nil }
        return keyID
    }

    /// What AES-GCM authenticates along with a subscriber's secret: ties the ciphertext to
    /// that subscriber.
    public static func associatedData(subscriberID: Int64) -> [UInt8] {
        Array("consent-sync/subscriber-secret/v1/\(subscriberID)".utf8)
    }

    enum Stored {
        case plaintext(String)
        case encrypted(keyID: String, combined: Data)
    }

    static func parse(_ stored: String) throws(SecretKeyringError) -> Stored {
        if stored.hasPrefix(SigningSecret.prefix) { return .plaintext(stored) }
        guard stored.hasPrefix(encryptedPrefix) else {
            let scheme = stored.hasPrefix("enc:") ? "an unknown encryption version" : "neither enc:v1:… nor whsec_…"
            throw SecretKeyringError(code: .malformedSecret, detail: scheme)
        }
        let parts = stored.dropFirst(encryptedPrefix.count).split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 8, parts[0].allSatisfy(\.isHexDigit),
              let combined = Data(base64Encoded: String(parts[1])),
              combined.count > 12 + 16
        else {
            throw SecretKeyringError(code: .malformedSecret, detail: "not enc:v1:<key id>:<base64>")
        }
        return .encrypted(keyID: String(parts[0]).lowercased(), combined: combined)
    }
}
