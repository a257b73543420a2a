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
        self.consume(utf8: Array(rawLine.utf8))
    }

    /// Feeds one line as the bytes libcurl's header callback passes, with or without its CRLF.
    ///
    /// Works on bytes throughout: the delimiters (CR, LF, space, tab, colon) are ASCII and never
    /// part of a multi-byte sequence, so a combining or prepended mark cannot glue itself to one
    /// and move a split (a `Character`-wise search did: found by the receiver fuzz target).
    mutating func consume<Bytes: BidirectionalCollection>(utf8 rawLine: Bytes) where Bytes.Element == UInt8 {
        var end = rawLine.endIndex
        while end > rawLine.startIndex {
            let before = rawLine.index(before: end)
            guard rawLine[before] == UInt8(ascii: "\r") || rawLine[before] == UInt8(ascii: "\n") else { break }
            end = before
        }
        let line = rawLine[rawLine.startIndex..<end]
        if line.starts(with: "HTTP/".utf8) {
            self.headers.removeAll(keepingCapacity: true)
            self.headEnded = false
            return
        }
        guard let first = line.first else {
            self.headEnded = true
            return
        }
        // Trailers, after the blank line, are not response headers.
        guard !self.headEnded else { return }
        if first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
            // obs-fold: continues the previous field's value
            if !self.headers.isEmpty {
                self.headers[self.headers.count - 1].value += " " + Self.trimmed(line)
            }
            return
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return }
        self.headers.append(
            HTTPHeader(name: Self.trimmed(line[..<colon]), value: Self.trimmed(line[line.index(after: colon)...]))
        )
    }

    /// The text of `bytes` without leading and trailing spaces and tabs.
    private static func trimmed<Bytes: BidirectionalCollection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        func isSpace(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, isSpace(bytes[start]) { start = bytes.index(after: start) }
        while end > start, isSpace(bytes[bytes.index(before: end)]) { end = bytes.index(before: end) }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }
}
