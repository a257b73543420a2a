/// How each log event is written: one `key=value` line (logfmt) or one JSON object per line.
public enum LogFormat: String, Sendable, CaseIterable, CustomStringConvertible {
    /// `ts=… level=info msg="…" key=value …`, easy to read and to grep.
    case logfmt
    /// `{"ts":"…","level":"info","msg":"…",…}`, for log shippers that parse JSON.
    case json

    public var description: String { self.rawValue }
}
