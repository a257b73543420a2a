/// Every configuration key there is: what the file may contain, which `CONSENT_SYNC_*`
/// variables mean something, and what to suggest for a typo.
enum ConfigSchema {
    /// In the order `check-config` prints them and `config/consent-sync.yaml` documents them.
    static let keys: [String] = [
        "database.url",
        "database.password_file",
        "relay.listen",
        "relay.poll_interval_ms",
        "relay.capture_poll_interval_ms",
        "relay.fan_out_batch_size",
        "relay.claim_batch_size",
        "relay.max_in_flight",
        "relay.lease_margin_ms",
        "relay.janitor_interval_ms",
        "relay.backlog_interval_ms",
        "relay.drain_timeout_ms",
        "relay.event_source",
        "relay.disable_after_failing_seconds",
        "retry.initial_delay_ms",
        "retry.max_delay_ms",
        "retry.max_attempts",
        "retry.max_age_seconds",
        "retry.max_retry_after_seconds",
        "log.level",
        "log.format",
        "log.subject_hash_key_file",
        "ops.enabled",
        "ops.listen",
        "ops.health_window_ms",
        "ops.receipts_token_file",
        "http.allowed_schemes",
        "http.allow_networks",
        "http.proxy",
        "secrets.master_key_file",
        "secrets.previous_master_key_files",
        "secrets.allow_plaintext",
        "deadlines.withdrawn_seconds",
        "deadlines.denied_seconds",
        "deadlines.granted_seconds",
        "deadlines.deleted_seconds",
        "deadlines.snapshot_seconds",
        "deadlines.erased_seconds",
        "retention.payload_days",
        "retention.receipt_days",
        "retention.interval_seconds",
    ]

    static let keySet = Set(keys)

    /// `database`, `relay`, `retry`, `log`, `ops`, `http`, `secrets`, `deadlines`, `retention`.
    static let sections: [String] = keys.reduce(into: []) { sections, key in
        let section = String(key.prefix { $0 != "." })
        if !sections.contains(section) { sections.append(section) }
    }

    static let environmentPrefix = "CONSENT_SYNC_"

    /// Variables with the prefix that are not settings: the config path and the test suite's own.
    static func isReservedEnvironmentVariable(_ name: String) -> Bool {
        name == "CONSENT_SYNC_CONFIG" || name.hasPrefix("CONSENT_SYNC_TEST_") || name == "CONSENT_SYNC_BINARY"
    }

    /// `relay.poll_interval_ms` → `CONSENT_SYNC_RELAY_POLL_INTERVAL_MS`.
    static func environmentVariable(for key: String) -> String {
        environmentPrefix + key.uppercased().replacing(".", with: "_")
    }

    /// The key a `CONSENT_SYNC_*` variable sets.
    static let keysByEnvironmentVariable: [String: String] = Dictionary(
        uniqueKeysWithValues: keys.map { (environmentVariable(for: $0), $0) }
    )

    /// The closest known key to a misspelt one: the same leaf in another section, or one within
    /// a few typing mistakes.
    static func suggestion(forKey unknown: String) -> String? {
        let leaf = unknown.split(separator: ".").last.map(String.init) ?? unknown
        if let sameLeaf = keys.first(where: { $0.hasSuffix("." + leaf) }) {
            return sameLeaf
        }
        return closest(to: unknown, among: keys + sections)
    }

    static func suggestion(forEnvironmentVariable unknown: String) -> String? {
        closest(to: unknown, among: Array(keysByEnvironmentVariable.keys).sorted())
    }

    static func closest(to text: String, among candidates: [String]) -> String? {
        let lowered = text.lowercased()
        var best: (candidate: String, distance: Int)?
        for candidate in candidates {
            let distance = editDistance(lowered, candidate.lowercased())
            if distance < (best?.distance ?? Int.max) {
                best = (candidate, distance)
            }
        }
        guard let best, best.distance <= max(2, text.count / 4) else { return nil }
        return best.candidate
    }

    /// Levenshtein distance.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.unicodeScalars)
        let b = Array(b.unicodeScalars)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
