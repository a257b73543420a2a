/// Collects the header fields of the final response from the raw lines
/// libcurl's header callback delivers, one line per call.
///
/// libcurl passes every response's head: interim `100 Continue` responses and
/// a proxy's `CONNECT` reply come before the real one, and trailers after the
/// body. Each status line starts over, so only the last head remains.
struct ResponseHeadParser {
    private(set) var headers: [HTTPHeader] = []
    private var headEnded = false

    /// Feeds one line, with or without its CRLF.
    mutating func consume(_ rawLine: Substring) {
        var line = rawLine
        while let last = line.last, last == "\r" || last == "\n" || last == "\r\n" {
            line.removeLast()
        }
        if line.hasPrefix("HTTP/") {
            self.headers.removeAll(keepingCapacity: true)
            self.headEnded = false
            return
        }
        if line.isEmpty {
            self.headEnded = true
            return
        }
        // Trailers, after the blank line, are not response headers.
        guard !self.headEnded else { return }
        if let first = line.first, first == " " || first == "\t" {
            // obs-fold: continues the previous field's value
            if !self.headers.isEmpty {
                self.headers[self.headers.count - 1].value += " " + line.trimmingSpaces()
            }
            return
        }
        // Split on the first ':' byte: a Character-wise search lets a combining or prepended
        // mark glue itself to the colon and moves the split (found by the receiver fuzz target).
        let bytes = Array(line.utf8)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return }
        self.headers.append(
            HTTPHeader(
                name: String(decoding: bytes[..<colon], as: UTF8.self).trimmingSpaces(),
                value: String(decoding: bytes[(colon + 1)...], as: UTF8.self).trimmingSpaces()
            )
        )
    }
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        var result = Substring(self)
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return String(result)
    }
}
