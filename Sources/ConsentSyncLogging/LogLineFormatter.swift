import Logging

/// Turns one log event into one line of text: logfmt or JSON, with or without the journald
/// priority prefix. Pure, so every byte of the output can be tested.
///
/// Whatever the metadata holds, the result is exactly one line: line breaks and other control
/// characters inside values are escaped.
public struct LogLineFormatter: Sendable {
    public var format: LogFormat
    /// Writing to journald: start each line with the syslog priority (`<6>` for info, …) so
    /// `journalctl -p` can filter, and leave the timestamp to journald.
    public var journald: Bool

    public init(format: LogFormat, journald: Bool = false) {
        self.format = format
        self.journald = journald
    }

    /// The syslog priority journald reads from a `<N>` line prefix.
    public static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// The line for one event, ending in `\n`.
    ///
    /// Metadata keys are written in sorted order after `ts`, `level` and `msg` (and `error`, when
    /// the event carries one and the metadata has no `error` key); a metadata key that collides
    /// with one of those is written with a leading `_`.
    public func line(
        level: Logger.Level,
        message: String,
        metadata: Logger.Metadata,
        error: (any Error)? = nil,
        timestamp: LogTimestamp
    ) -> String {
        var fields: [(key: String, value: Logger.MetadataValue)] = []
        if !self.journald {
            fields.append(("ts", .string(timestamp.description)))
        }
        fields.append(("level", .string(level.rawValue)))
        fields.append(("msg", .string(message)))
        var metadata = metadata
        if let error, metadata["error"] == nil {
            metadata["error"] = .string(String(describing: error))
        }
        for key in metadata.keys.sorted() {
            let name = Self.reservedKeys.contains(key) ? "_" + key : key
            fields.append((name, metadata[key]!))
        }

        var output = self.journald ? "<\(Self.syslogPriority(level))>" : ""
        switch self.format {
        case .logfmt:
            var first = true
            for field in fields {
                for (key, value) in Self.flatten(key: Self.logfmtKey(field.key), field.value) {
                    if !first { output += " " }
                    first = false
                    output += key + "=" + Self.logfmtValue(value)
                }
            }
        case .json:
            output += "{"
            for (index, field) in fields.enumerated() {
                if index > 0 { output += "," }
                output += Self.jsonString(field.key) + ":" + Self.jsonValue(field.value)
            }
            output += "}"
        }
        return output + "\n"
    }

    static let reservedKeys: Set<String> = ["ts", "level", "msg"]

    // MARK: logfmt

    /// Nested dictionaries become dotted keys (`http.status=503`); arrays become one value.
    static func flatten(key: String, _ value: Logger.MetadataValue) -> [(String, String)] {
        switch value {
        case .dictionary(let dictionary) where !dictionary.isEmpty:
            return dictionary.keys.sorted().flatMap { flatten(key: key + "." + logfmtKey($0), dictionary[$0]!) }
        default:
            return [(key, plainText(value))]
        }
    }

    static func plainText(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let text): text
        case .stringConvertible(let convertible): convertible.description
        case .array(let values): "[" + values.map(plainText).joined(separator: ",") + "]"
        case .dictionary(let dictionary):
            "{" + dictionary.keys.sorted().map { $0 + ":" + plainText(dictionary[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// Keys are limited to `[A-Za-z0-9_.-/]`; anything else becomes `_`.
    static func logfmtKey(_ key: String) -> String {
        guard !key.isEmpty else { return "_" }
        var output = ""
        output.unicodeScalars.append(contentsOf: key.unicodeScalars.map { scalar in
            switch scalar {
            case "a"..."z", "A"..."Z", "0"..."9", "_", ".", "-", "/": scalar
            default: "_"
            }
        })
        return output
    }

    /// Bare when safe, otherwise in double quotes with `\`, `"` and control characters escaped.
    static func logfmtValue(_ text: String) -> String {
        let needsQuotes = text.isEmpty || text.unicodeScalars.contains { scalar in
            scalar == " " || scalar == "\"" || scalar == "=" || scalar == "\\" || isUnsafe(scalar) || scalar.properties.isWhitespace
        }
        guard needsQuotes else { return text }
        var output = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            default:
                if isUnsafe(scalar) {
                    output += unicodeEscape(scalar)
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        return output + "\""
    }

    // MARK: JSON

    static func jsonValue(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let text): jsonString(text)
        case .stringConvertible(let convertible): jsonString(convertible.description)
        case .array(let values): "[" + values.map(jsonValue).joined(separator: ",") + "]"
        case .dictionary(let dictionary):
            "{" + dictionary.keys.sorted().map { jsonString($0) + ":" + jsonValue(dictionary[$0]!) }.joined(separator: ",") + "}"
        }
    }

    static func jsonString(_ text: String) -> String {
        var output = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            default:
                if isUnsafe(scalar) {
                    output += unicodeEscape(scalar)
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        return output + "\""
    }

    // MARK: shared

    /// Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: anything a
    /// terminal or a log reader might take as a line break or a command.
    static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    static func unicodeEscape(_ scalar: Unicode.Scalar) -> String {
        let hex = String(scalar.value, radix: 16)
        return "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
    }
}
