import ConsentSyncEngine

/// What `/healthz` or `/readyz` answers: an HTTP status and a small JSON object, decided from
/// the relay's health alone so that it can be tested without a server.
public struct ProbeResponse: Sendable, Equatable {
    /// 200 or 503.
    public var status: Int
    /// One JSON object, no trailing newline.
    public var body: String

    public init(status: Int, body: String) {
        self.status = status
        self.body = body
    }

    /// `/healthz`: 200 `{"status":"ok","loop_age_ms":N}` while the loop turns (or the process is
    /// still starting: `"starting"`, `loop_age_ms` null), else 503 `{"status":"stalled",…}`.
    public static func liveness(_ liveness: LoopLiveness) -> ProbeResponse {
        let status: (code: Int, word: String) = switch liveness {
        case .alive: (200, "ok")
        case .starting: (200, "starting")
        case .stalled: (503, "stalled")
        }
        var json = JSONObject()
        json.add("status", string: status.word)
        json.add("loop_age_ms", int: liveness.loopAgeMilliseconds)
        return ProbeResponse(status: status.code, body: json.text)
    }

    /// `/readyz`: 200 `{"status":"ready","database":true,"listening":true,"schema_version":1}` when
    /// the relay is ready, else 503 with the same fields (status `"not_ready"` or `"stopping"`)
    /// and `"last_error"` when there is one.
    ///
    /// `last_error` is the relay's error description, which carries no secrets (PostgreSQL errors
    /// never include passwords or parameter values); it is cut to ``maxErrorLength`` characters.
    public static func readiness(_ snapshot: RelayHealth.Snapshot) -> ProbeResponse {
        let ready = snapshot.isReady
        var json = JSONObject()
        json.add("status", string: ready ? "ready" : snapshot.stopping ? "stopping" : "not_ready")
        json.add("database", bool: snapshot.databaseReady)
        json.add("listening", bool: snapshot.listening)
        json.add("schema_version", int: snapshot.schemaVersion.map(Int64.init))
        if !ready, let lastError = snapshot.lastError {
            json.add("last_error", string: String(lastError.prefix(maxErrorLength)))
        }
        return ProbeResponse(status: ready ? 200 : 503, body: json.text)
    }

    /// How much of the relay's last error `/readyz` shows.
    public static let maxErrorLength = 300
}

/// Writes one flat JSON object in the order its members are added.
struct JSONObject {
    private var members: [String] = []

    mutating func add(_ key: String, string value: String?) {
        members.append("\(Self.quoted(key)):\(value.map(Self.quoted) ?? "null")")
    }

    mutating func add(_ key: String, int value: Int64?) {
        members.append("\(Self.quoted(key)):\(value.map { "\($0)" } ?? "null")")
    }

    mutating func add(_ key: String, bool value: Bool) {
        members.append("\(Self.quoted(key)):\(value)")
    }

    var text: String { "{" + members.joined(separator: ",") + "}" }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}
