import ConsentSyncCore
import Foundation

/// One key's effective value for `check-config`: secrets already redacted.
struct EffectiveSetting: Sendable {
    var key: String
    /// As it would be written in YAML (`2000`, `"logfmt"`, `true`); `(none)` when not set.
    var value: String
    var origin: ConfigOrigin
}

/// Typed reads over the layers (default < file < environment) that collect every problem
/// instead of stopping at the first, and remember where each effective value came from.
struct ConfigLoader {
    let document: ConfigDocument?
    let environment: [String: String]
    private(set) var problems: [ConfigurationError.Problem] = []
    private(set) var settings: [EffectiveSetting] = []
    private var environmentValues: [String: ConfigRawValue] = [:]

    init(document: ConfigDocument?, environment: [String: String]) {
        self.document = document
        self.environment = environment
        self.problems = document?.problems ?? []
        for name in environment.keys.sorted() where name.hasPrefix(ConfigSchema.environmentPrefix) {
            if ConfigSchema.isReservedEnvironmentVariable(name) { continue }
            let value = environment[name]!
            guard let key = ConfigSchema.keysByEnvironmentVariable[name] else {
                var reason = "unknown setting"
                if name.contains("PASSWORD") {
                    reason += "; passwords are read from files only: use CONSENT_SYNC_DATABASE_PASSWORD_FILE or the systemd credential db-password"
                } else if let suggestion = ConfigSchema.suggestion(forEnvironmentVariable: name) {
                    reason += "; did you mean \(suggestion)?"
                } else {
                    reason += "; settings are CONSENT_SYNC_ + a key path with '_' for '.', e.g. CONSENT_SYNC_LOG_LEVEL"
                }
                self.problems.append(.init(key: nil, origin: .environment(variable: name), reason: reason))
                continue
            }
            self.environmentValues[key] = ConfigRawValue(text: value, kind: .text, origin: .environment(variable: name))
        }
    }

    /// The value that wins for `key`: the environment's, else the file's (unless `null`).
    func raw(_ key: String) -> ConfigRawValue? {
        assert(ConfigSchema.keySet.contains(key), "\(key) is missing from ConfigSchema.keys")
        if let value = self.environmentValues[key] { return value }
        if let value = self.document?.values[key], value.kind != .null { return value }
        return nil
    }

    mutating func fail(_ key: String?, _ origin: ConfigOrigin?, _ reason: String) {
        self.problems.append(.init(key: key, origin: origin, reason: reason))
    }

    mutating func record(_ key: String, _ value: String, _ origin: ConfigOrigin) {
        self.settings.append(EffectiveSetting(key: key, value: value, origin: origin))
    }

    // MARK: typed reads

    mutating func integer(_ key: String, default defaultValue: Int, in range: ClosedRange<Int>, unit: String = "") -> Int {
        guard let raw = self.raw(key) else {
            self.record(key, String(defaultValue), .defaultValue)
            return defaultValue
        }
        let valid = "use a whole number\(unit) in \(range.lowerBound)...\(range.upperBound)"
        let number: Int?
        switch raw.kind {
        case .integer(let value): number = value
        case .text where raw.origin.isEnvironment: number = Int(raw.text.trimmingCharacters(in: .whitespaces))
        case .text: number = nil
        default: number = nil
        }
        guard let number else {
            let quoted = raw.origin.isEnvironment ? "" : (Int(raw.text) != nil ? " (remove the quotes)" : "")
            self.fail(key, raw.origin, "\(Self.show(raw.text)) is not a whole number\(quoted); \(valid)")
            self.record(key, String(defaultValue), .defaultValue)
            return defaultValue
        }
        guard range.contains(number) else {
            self.fail(key, raw.origin, "\(number) is out of range; \(valid)")
            self.record(key, String(defaultValue), .defaultValue)
            return defaultValue
        }
        self.record(key, String(number), raw.origin)
        return number
    }

    mutating func milliseconds(_ key: String, default defaultValue: Duration, in range: ClosedRange<Int>) -> Duration {
        .milliseconds(self.integer(key, default: Int(defaultValue.milliseconds), in: range, unit: " of milliseconds"))
    }

    mutating func seconds(_ key: String, default defaultValue: Duration, in range: ClosedRange<Int>) -> Duration {
        .seconds(self.integer(key, default: Int(defaultValue.components.seconds), in: range, unit: " of seconds"))
    }

    mutating func boolean(_ key: String, default defaultValue: Bool) -> Bool {
        guard let raw = self.raw(key) else {
            self.record(key, String(defaultValue), .defaultValue)
            return defaultValue
        }
        func word(_ text: String) -> Bool? {
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "true", "1", "yes", "on": true
            case "false", "0", "no", "off": false
            default: nil
            }
        }
        var value: Bool?
        switch raw.kind {
        case .boolean(let flag): value = flag
        case .text where raw.origin.isEnvironment: value = word(raw.text)
        default: value = nil
        }
        guard let value else {
            let quoted = !raw.origin.isEnvironment && raw.kind == .text && word(raw.text) != nil ? " (remove the quotes)" : ""
            self.fail(key, raw.origin, "\(Self.show(raw.text)) is not true or false\(quoted); use true or false")
            self.record(key, String(defaultValue), .defaultValue)
            return defaultValue
        }
        self.record(key, String(value), raw.origin)
        return value
    }

    /// One of a fixed set of words (case-insensitive); `defaultName` must be one of them.
    mutating func choice<T>(_ key: String, default defaultName: String, _ options: KeyValuePairs<String, T>) -> T {
        let defaultValue = options.first { $0.key == defaultName }!.value
        guard let raw = self.raw(key) else {
            self.record(key, Self.quote(defaultName), .defaultValue)
            return defaultValue
        }
        let word = raw.text.trimmingCharacters(in: .whitespaces).lowercased()
        guard let match = options.first(where: { $0.key == word }) else {
            self.fail(key, raw.origin, "\(Self.show(raw.text)) is not one of \(options.map(\.key).joined(separator: ", "))")
            self.record(key, Self.quote(defaultName), .defaultValue)
            return defaultValue
        }
        self.record(key, Self.quote(match.key), raw.origin)
        return match.value
    }

    /// Free text on one line. `record: false` leaves the `check-config` entry to the caller (for
    /// values that need redacting).
    mutating func text(_ key: String, default defaultValue: String, record shouldRecord: Bool = true) -> (value: String, origin: ConfigOrigin) {
        guard let raw = self.raw(key) else {
            if shouldRecord { self.record(key, Self.quote(defaultValue), .defaultValue) }
            return (defaultValue, .defaultValue)
        }
        if raw.text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            self.fail(key, raw.origin, "contains a line break or another control character")
            return (defaultValue, .defaultValue)
        }
        if shouldRecord { self.record(key, Self.quote(raw.text), raw.origin) }
        return (raw.text, raw.origin)
    }

    // MARK: display

    /// A value quoted back in a message: at most 40 characters, control characters hidden.
    static func show(_ text: String) -> String {
        let cleaned = String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
        return cleaned.count > 40 ? "'\(cleaned.prefix(40))…'" : "'\(cleaned)'"
    }

    /// A YAML double-quoted string.
    static func quote(_ text: String) -> String {
        var output = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    output += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        return output + "\""
    }
}

extension ConfigOrigin {
    var isEnvironment: Bool {
        if case .environment = self { return true }
        return false
    }
}
