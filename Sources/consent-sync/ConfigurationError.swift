/// Where a setting's value came from: shown by `check-config` and named in every error.
enum ConfigOrigin: Sendable, Equatable, CustomStringConvertible {
    case defaultValue
    /// A line of the config file (nil when the problem is the file as a whole).
    case file(path: String, line: Int?)
    case environment(variable: String)
    /// A file in systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
    case credential(path: String)

    /// `default`, `/etc/consent-sync/consent-sync.yaml:12`, `env CONSENT_SYNC_LOG_LEVEL`, …
    var description: String {
        switch self {
        case .defaultValue: "default"
        case .file(let path, let line): line.map { "\(path):\($0)" } ?? path
        case .environment(let variable): "env \(variable)"
        case .credential(let path): "credential \(path)"
        }
    }

    /// For messages: `in /etc/consent-sync/consent-sync.yaml, line 12`.
    var location: String? {
        switch self {
        case .defaultValue: nil
        case .file(let path, let line): line.map { "in \(path), line \($0)" } ?? "in \(path)"
        case .environment(let variable): "in environment variable \(variable)"
        case .credential(let path): "in systemd credential \(path)"
        }
    }
}

/// Bad settings: each problem says which key, where (file and line, or environment variable)
/// and what would be valid. Never carries a secret: values of secret-bearing keys are not
/// quoted back.
struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    /// One bad setting.
    struct Problem: Sendable, CustomStringConvertible {
        /// The key path (`relay.poll_interval_ms`), or nil for the file as a whole.
        var key: String?
        var origin: ConfigOrigin?
        /// What is wrong and what would be valid.
        var reason: String

        var description: String {
            var text = "configuration error"
            if let key { text += " at '\(key)'" }
            if let location = self.origin?.location { text += " " + location }
            return text + ": " + self.reason
        }
    }

    /// At least one.
    var problems: [Problem]

    init(problems: [Problem]) {
        precondition(!problems.isEmpty, "a ConfigurationError needs at least one problem")
        self.problems = problems
    }

    init(key: String?, origin: ConfigOrigin?, reason: String) {
        self.init(problems: [Problem(key: key, origin: origin, reason: reason)])
    }

    /// The first problem's key.
    var key: String? { self.problems[0].key }

    /// The first problem's file, when it came from the config file.
    var file: String? {
        if case .file(let path, _)? = self.problems[0].origin { return path }
        return nil
    }

    /// The first problem's line in the config file.
    var line: Int? {
        if case .file(_, let line)? = self.problems[0].origin { return line }
        return nil
    }

    /// One problem per line, each starting with `configuration error`.
    var description: String {
        self.problems.map(\.description).joined(separator: "\n")
    }
}
