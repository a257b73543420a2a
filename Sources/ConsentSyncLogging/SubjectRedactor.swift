import Crypto
import Logging

/// Turns subject ids (customer identifiers, personal data) into stable pseudonyms for logs:
/// `sub_` followed by the first 16 hex digits of HMAC-SHA256(key, subject).
///
/// The same key gives the same pseudonym, so one subject's events can be followed through the
/// log; without the key the pseudonym cannot be turned back into the id or checked against a
/// guess. A random key (the default) makes pseudonyms comparable within one process only.
public struct SubjectRedactor: Sendable {
    /// Keys shorter than this are refused by the configuration.
    public static let minimumKeyLength = 16

    private let key: SymmetricKey

    /// A redactor keyed with `key` (for example the contents of `log.subject_hash_key_file`).
    public init(key: [UInt8]) {
        self.key = SymmetricKey(data: key)
    }

    /// A redactor with a fresh random 256-bit key.
    public static func random() -> SubjectRedactor {
        SubjectRedactor(key: SymmetricKey(size: .bits256))
    }

    private init(key: SymmetricKey) {
        self.key = key
    }

    /// `sub_<16 hex digits>` for `subject`.
    public func hash(_ subject: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Array(subject.utf8), using: self.key)
        var text = "sub_"
        for byte in code.prefix(8) {
            text += Self.hexDigits[Int(byte >> 4)]
            text += Self.hexDigits[Int(byte & 0x0F)]
        }
        return text
    }

    /// ``hash(_:)`` as a metadata value: `logger.info("…", metadata: ["subject": redactor.metadata(id)])`.
    public func metadata(_ subject: String) -> Logger.MetadataValue {
        .string(self.hash(subject))
    }

    /// True for text that already is a pseudonym made by ``hash(_:)``.
    public static func isPseudonym(_ text: String) -> Bool {
        let utf8 = Array(text.utf8)
        guard utf8.count == 20, text.hasPrefix("sub_") else { return false }
        return utf8.dropFirst(4).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    private static let hexDigits = "0123456789abcdef".map(String.init)
}
