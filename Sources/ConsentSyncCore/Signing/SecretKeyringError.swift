/// Why a signing secret could not be encrypted or decrypted, or a master key not read.
///
/// The message says which subscriber (when known), which key (by its id) and what to do.
/// It never holds a secret or a key's bytes.
public struct SecretKeyringError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        /// The secret is encrypted with a key that is not configured.
        public static let keyNotConfigured = Code(name: "key not configured")
        /// The key is configured but the secret does not decrypt with it: the ciphertext was
        /// altered, or copied from another subscriber.
        public static let decryptionFailed = Code(name: "decryption failed")
        /// The stored text is neither `enc:v1:…` nor `whsec_…`.
        public static let malformedSecret = Code(name: "malformed secret")
        /// A secret was to be stored, but no master key is configured and plaintext is not allowed.
        public static let noMasterKey = Code(name: "no master key")
        /// A master key file does not hold a usable key.
        public static let invalidKey = Code(name: "invalid key")
        /// A subscriber has no active signing secret left.
        public static let noActiveSecret = Code(name: "no active secret")
        public var description: String { name }
    }

    public var code: Code
    /// The key the secret needs (``Code/keyNotConfigured``, ``Code/decryptionFailed``).
    public var keyID: String?
    /// The ids of the keys that are configured, current first.
    public var configuredKeyIDs: [String]
    /// The subscriber whose secret it is, when known; filled in by whoever knows it.
    public var subscriber: String?
    /// Extra words for ``Code/malformedSecret`` and ``Code/invalidKey``.
    public var detail: String?

    public init(code: Code, keyID: String? = nil, configuredKeyIDs: [String] = [], subscriber: String? = nil, detail: String? = nil) {
        self.code = code
        self.keyID = keyID
        self.configuredKeyIDs = configuredKeyIDs
        self.subscriber = subscriber
        self.detail = detail
    }

    /// The same error, about the subscriber named `name`.
    public func about(subscriber name: String) -> SecretKeyringError {
        var copy = self
        copy.subscriber = name
        return copy
    }

    public var description: String {
        let who = subscriber.map { "subscriber '\($0)'" } ?? "a subscriber"
        let configured = configuredKeyIDs.isEmpty
            ? "no master key is configured"
            : "configured: \(configuredKeyIDs.joined(separator: ", "))"
        let key = keyID ?? "?"
        let newSecret = "consent-sync subscriber rotate-secret \(subscriber ?? "NAME") --overlap 0"
        switch code {
        case .keyNotConfigured:
            return "\(who) has a secret encrypted with key \(key), which is not configured (\(configured)): "
                + "set secrets.master_key_file (or the systemd credential master-key), or add it to "
                + "secrets.previous_master_key_files, to the file holding key \(key)"
        case .decryptionFailed:
            return "\(who) has a secret that does not decrypt with key \(key): it was altered, or copied from "
                + "another subscriber; give the subscriber a new secret with '\(newSecret)'"
        case .malformedSecret:
            return "\(who) has an unreadable secret in the database\(detail.map { " (\($0))" } ?? ""); "
                + "give the subscriber a new secret with '\(newSecret)'"
        case .noMasterKey:
            return "no master key is configured to encrypt signing secrets: create one "
                + "(openssl rand -base64 32 > /etc/consent-sync/master.key; chmod 600 it) and set "
                + "secrets.master_key_file, or the systemd credential master-key; or set "
                + "secrets.allow_plaintext: true to store secrets unencrypted (then a database dump reveals them)"
        case .noActiveSecret:
            return "\(who) has no active signing secret; give it one with 'consent-sync subscriber rotate-secret \(subscriber ?? "NAME")'"
        default:
            return "invalid master key: \(detail ?? code.description)"
        }
    }
}
