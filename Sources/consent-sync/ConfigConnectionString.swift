/// Finds the passwords written into a libpq connection string, so that `check-config` can show
/// the string without them and messages can be scrubbed of them.
///
/// Follows libpq's two syntaxes: URIs (`postgresql://user:PASSWORD@host/db?password=PASSWORD`)
/// and `keyword=value` lists (`password=PASSWORD`, `password='PASS WORD'`). libpq itself has
/// already accepted the string by the time it is shown.
enum ConfigConnectionString {
    /// The string with every password replaced by `********`; nil when it cannot be taken apart.
    static func redacted(_ connectionString: String) -> String? {
        guard let ranges = passwordRanges(connectionString) else { return nil }
        var bytes = Array(connectionString.utf8)
        for range in ranges.sorted(by: { $0.lowerBound > $1.lowerBound }) {
            bytes.replaceSubrange(range, with: Array("********".utf8))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The passwords as written (and, for URIs, percent-decoded); nil when the string cannot be
    /// taken apart.
    static func passwords(in connectionString: String) -> [String]? {
        guard let ranges = passwordRanges(connectionString) else { return nil }
        let bytes = Array(connectionString.utf8)
        var found: [String] = []
        for range in ranges {
            let text = String(decoding: bytes[range], as: UTF8.self)
            found.append(text)
            if let decoded = text.removingPercentEncodingIfURI(isURI(connectionString)), decoded != text {
                found.append(decoded)
            }
        }
        return found
    }

    static func isURI(_ text: String) -> Bool {
        text.hasPrefix("postgresql://") || text.hasPrefix("postgres://")
    }

    /// Byte ranges of password values.
    static func passwordRanges(_ text: String) -> [Range<Int>]? {
        let bytes = Array(text.utf8)
        return isURI(text) ? uriPasswordRanges(bytes) : keywordPasswordRanges(bytes)
    }

    private static func uriPasswordRanges(_ bytes: [UInt8]) -> [Range<Int>]? {
        guard let schemeEnd = find(Array("://".utf8), in: bytes).map({ $0 + 3 }) else { return nil }
        var ranges: [Range<Int>] = []
        // As libpq reads it: the user info runs to the first '@' before any '/', so a password
        // may contain '?' or ':' (found by the config fuzz target with a libpq-style oracle).
        var hostStart = schemeEnd
        if let at = bytes[schemeEnd...].firstIndex(where: { $0 == UInt8(ascii: "@") || $0 == UInt8(ascii: "/") }),
            bytes[at] == UInt8(ascii: "@")
        {
            if let colon = bytes[schemeEnd..<at].firstIndex(of: UInt8(ascii: ":")) {
                ranges.append((colon + 1)..<at)
            }
            hostStart = at + 1
        }
        let authorityEnd = bytes[hostStart...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? bytes.count
        if let question = bytes[authorityEnd...].firstIndex(of: UInt8(ascii: "?")) {
            var start = question + 1
            while start <= bytes.count {
                let end = bytes[start...].firstIndex(of: UInt8(ascii: "&")) ?? bytes.count
                if let equals = bytes[start..<end].firstIndex(of: UInt8(ascii: "=")) {
                    let name = String(decoding: bytes[start..<equals], as: UTF8.self)
                    if (name.removingPercentEncodingIfURI(true) ?? name).lowercased() == "password" {
                        ranges.append((equals + 1)..<end)
                    }
                }
                start = end + 1
            }
        }
        return ranges
    }

    private static func keywordPasswordRanges(_ bytes: [UInt8]) -> [Range<Int>]? {
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || (0x09...0x0D).contains(byte) }
        var ranges: [Range<Int>] = []
        var index = 0
        while true {
            while index < bytes.count && isSpace(bytes[index]) { index += 1 }
            if index == bytes.count { return ranges }
            let keyStart = index
            while index < bytes.count && !isSpace(bytes[index]) && bytes[index] != UInt8(ascii: "=") { index += 1 }
            let keyword = String(decoding: bytes[keyStart..<index], as: UTF8.self)
            while index < bytes.count && isSpace(bytes[index]) { index += 1 }
            guard index < bytes.count, bytes[index] == UInt8(ascii: "=") else { return nil }
            index += 1
            while index < bytes.count && isSpace(bytes[index]) { index += 1 }
            let valueRange: Range<Int>
            if index < bytes.count && bytes[index] == UInt8(ascii: "'") {
                index += 1
                let start = index
                while index < bytes.count && bytes[index] != UInt8(ascii: "'") {
                    index += bytes[index] == UInt8(ascii: "\\") ? 2 : 1
                }
                guard index < bytes.count else { return nil }
                valueRange = start..<index
                index += 1
            } else {
                let start = index
                while index < bytes.count && !isSpace(bytes[index]) {
                    index += bytes[index] == UInt8(ascii: "\\") ? 2 : 1
                }
                index = min(index, bytes.count)
                valueRange = start..<index
            }
            if keyword == "password" {
                ranges.append(valueRange)
            }
        }
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where Array(haystack[start..<(start + needle.count)]) == needle {
            return start
        }
        return nil
    }
}

extension String {
    /// `%41` → `A` for URI parts; nil for invalid escapes or when `isURI` is false.
    fileprivate func removingPercentEncodingIfURI(_ isURI: Bool) -> String? {
        guard isURI else { return nil }
        var bytes: [UInt8] = []
        var iterator = Array(self.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
}
