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
        guard let colon = line.firstIndex(of: ":") else { return }
        self.headers.append(
            HTTPHeader(
                name: String(line[..<colon].trimmingSpaces()),
                value: String(line[line.index(after: colon)...].trimmingSpaces())
            )
        )
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return result
    }
}
