/// The version of consent-sync, reported in `user-agent` and `--version`.
public enum ConsentSyncVersion {
    public static let current = "0.1.0"
    public static var userAgent: String { "consent-sync/\(current)" }
}
