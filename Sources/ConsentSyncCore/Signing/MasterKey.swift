import Crypto
import Foundation

/// A 256-bit key that encrypts subscribers' signing secrets at rest (AES-GCM).
///
/// Its ``id``, the first 8 hex digits of the SHA-256 of the key, is stored beside every
/// ciphertext, so that an error can say *which* key a secret needs. The id reveals nothing
/// usable about the key; the key's bytes are never shown (``description`` gives the id only).
public struct MasterKey: Sendable, CustomStringConvertible {
    /// AES-256: 32 bytes.
    public static let byteCount = 32

    let key: SymmetricKey
    /// `1a2b3c4d`: names the key in stored secrets, errors and `check-config`.
    public let id: String

    /// A key from exactly ``byteCount`` bytes.
    public init(bytes: [UInt8]) throws(SecretKeyringError) {
        guard bytes.count == Self.byteCount else {
            throw SecretKeyringError(code: .invalidKey, detail: "a master key is exactly \(Self.byteCount) bytes (got \(bytes.count))")
        }
        self.key = SymmetricKey(data: bytes)
        self.id = Self.id(of: bytes)
    }

    /// Reads a key file's contents: 32 random bytes written as base64 (44 characters, what
    /// `openssl rand -base64 32` prints) or as 64 hex digits (`openssl rand -hex 32`).
    /// Surrounding white space and line breaks are ignored.
    ///
    /// - Parameter path: only for the error message, which names the file and never its contents.
    public init(fileContents: [UInt8], path: String) throws(SecretKeyringError) {
        let text = String(decoding: fileContents, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let create = "create one with: openssl rand -base64 32 > \(path)"
        guard !text.isEmpty else {
            throw SecretKeyringError(code: .invalidKey, detail: "'\(path)' is empty; a master key is \(Self.byteCount) random bytes as base64 (\(create))")
        }
        let bytes: [UInt8]
        if text.count == 2 * Self.byteCount, let hex = Self.decodeHex(text) {
            bytes = hex
        } else if let data = Data(base64Encoded: text) {
            bytes = Array(data)
        } else {
            throw SecretKeyringError(
                code: .invalidKey,
                detail: "'\(path)' holds neither base64 nor \(2 * Self.byteCount) hex digits; a master key is \(Self.byteCount) random bytes as base64 (\(create))"
            )
        }
        guard bytes.count == Self.byteCount else {
            let comparison = bytes.count < Self.byteCount ? "too short" : "too long"
            throw SecretKeyringError(
                code: .invalidKey,
                detail: "'\(path)' holds a \(bytes.count)-byte key, \(comparison); a master key is exactly \(Self.byteCount) random bytes as base64 (\(create))"
            )
        }
        try self.init(bytes: bytes)
    }

    /// A new key from the system's CSPRNG.
    public static func generate() -> MasterKey {
        let key = SymmetricKey(size: .bits256)
        let bytes = key.withUnsafeBytes { Array($0) }
        // 32 bytes by construction.
        return try! MasterKey(bytes: bytes)
    }

    /// The key as a key file holds it: base64 and a line break.
    public var fileContents: String {
        key.withUnsafeBytes { Data($0).base64EncodedString() } + "\n"
    }

    public var description: String { "master key \(id)" }

    /// The first 8 hex digits of SHA-256 of `bytes`.
    static func id(of bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).prefix(4).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 0x10 ? "0" + hex : hex
        }.joined()
    }

    static func decodeHex(_ text: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count / 2)
        var high: UInt8?
        for character in text.utf8 {
            let nibble: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = character - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = character - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let first = high {
                bytes.append(first << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return high == nil ? bytes : nil
    }
}
