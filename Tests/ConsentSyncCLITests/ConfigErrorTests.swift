import Foundation
import Testing

/// A config file that must be refused, and what the message must say.
struct BadFile: Sendable, CustomTestStringConvertible {
    var name: String
    /// `$DIR` is replaced by the scratch directory (which holds `short.key`, `empty.pw`, `two-lines.pw`).
    var yaml: String
    /// The key the message must name (`at 'relay.max_in_flight'`); nil for file-level problems.
    var key: String?
    /// The line the message must name.
    var line: Int?
    /// A piece of the reason: what is wrong or what would be valid.
    var hint: String

    var testDescription: String { name }

    static let all: [BadFile] = [
        BadFile(name: "typo in a key", yaml: "relay:\n  pol_interval_ms: 100\n", key: "relay.pol_interval_ms", line: 2, hint: "did you mean 'relay.poll_interval_ms'?"),
        BadFile(name: "key in the wrong section", yaml: "# comment\nrelay:\n  initial_delay_ms: 100\n", key: "relay.initial_delay_ms", line: 3, hint: "did you mean 'retry.initial_delay_ms'?"),
        BadFile(name: "typo in a section", yaml: "rely:\n  poll_interval_ms: 100\n", key: "rely", line: 1, hint: "did you mean 'relay'?"),
        BadFile(name: "string where a number goes", yaml: "relay:\n  poll_interval_ms: fast\n", key: "relay.poll_interval_ms", line: 2, hint: "'fast' is not a whole number"),
        BadFile(name: "quoted number", yaml: "relay:\n  claim_batch_size: \"20\"\n", key: "relay.claim_batch_size", line: 2, hint: "remove the quotes"),
        BadFile(name: "fraction where a whole number goes", yaml: "retry:\n  max_attempts: 2.5\n", key: "retry.max_attempts", line: 2, hint: "not a whole number"),
        BadFile(name: "number out of range", yaml: "relay:\n  max_in_flight: 0\n", key: "relay.max_in_flight", line: 2, hint: "0 is out of range; use a whole number in 1...100000"),
        BadFile(name: "negative duration", yaml: "relay:\n  drain_timeout_ms: -5\n", key: "relay.drain_timeout_ms", line: 2, hint: "out of range"),
        BadFile(name: "max delay below initial delay", yaml: "retry:\n  initial_delay_ms: 10000\n  max_delay_ms: 5000\n", key: "retry.max_delay_ms", line: 3, hint: "less than retry.initial_delay_ms"),
        BadFile(name: "unknown log level", yaml: "log:\n  level: loud\n", key: "log.level", line: 2, hint: "trace, debug, info, notice, warning, error, critical"),
        BadFile(name: "unknown log format", yaml: "log:\n  format: xml\n", key: "log.format", line: 2, hint: "logfmt, json"),
        BadFile(name: "not a boolean", yaml: "ops:\n  enabled: maybe\n", key: "ops.enabled", line: 2, hint: "use true or false"),
        BadFile(name: "quoted boolean", yaml: "ops:\n  enabled: \"false\"\n", key: "ops.enabled", line: 2, hint: "remove the quotes"),
        BadFile(name: "listen without port", yaml: "ops:\n  listen: localhost\n", key: "ops.listen", line: 2, hint: "the port is missing"),
        BadFile(name: "listen IPv6 without brackets", yaml: "ops:\n  listen: \"::1:9464\"\n", key: "ops.listen", line: 2, hint: "needs brackets"),
        BadFile(name: "listen port too large", yaml: "ops:\n  listen: 127.0.0.1:70000\n", key: "ops.listen", line: 2, hint: "0...65535"),
        BadFile(name: "listen bad IPv4", yaml: "ops:\n  listen: 300.1.1.1:9464\n", key: "ops.listen", line: 2, hint: "not an IPv4 address"),
        BadFile(name: "health window too short", yaml: "ops:\n  health_window_ms: 10\n", key: "ops.health_window_ms", line: 2, hint: "1000...3600000"),
        BadFile(name: "missing password file", yaml: "database:\n  password_file: $DIR/nope.pw\n", key: "database.password_file", line: 2, hint: "No such file or directory"),
        BadFile(name: "empty password file", yaml: "database:\n  password_file: $DIR/empty.pw\n", key: "database.password_file", line: 2, hint: "is empty"),
        BadFile(name: "password file with two lines", yaml: "database:\n  password_file: $DIR/two-lines.pw\n", key: "database.password_file", line: 2, hint: "more than one line"),
        BadFile(name: "password file is a directory", yaml: "database:\n  password_file: $DIR\n", key: "database.password_file", line: 2, hint: "cannot read"),
        BadFile(name: "short subject hash key", yaml: "log:\n  subject_hash_key_file: $DIR/short.key\n", key: "log.subject_hash_key_file", line: 2, hint: "use at least 16"),
        BadFile(name: "bad connection string", yaml: "database:\n  url: \"host=db port\"\n", key: "database.url", line: 2, hint: "invalid connection string"),
        BadFile(name: "bad connection URI", yaml: "database:\n  url: \"postgresql://db/app?nonsense=1\"\n", key: "database.url", line: 2, hint: "invalid URI query parameter"),
        BadFile(name: "password key", yaml: "database:\n  password: hunter22\n", key: "database.password", line: 2, hint: "passwords are read from files only"),
        BadFile(name: "list where a value goes", yaml: "relay:\n  max_in_flight:\n    - 1\n    - 2\n", key: "relay.max_in_flight", line: 3, hint: "must be a single value, found a list"),
        BadFile(name: "value where a section goes", yaml: "relay: 5\n", key: "relay", line: 1, hint: "must be a section"),
        BadFile(name: "top level is a list", yaml: "- relay\n", key: nil, line: 1, hint: "the top level must be sections"),
        BadFile(name: "duplicate key", yaml: "relay:\n  poll_interval_ms: 1000\n  poll_interval_ms: 2000\n", key: nil, line: 2, hint: "appears twice"),
        BadFile(name: "unterminated quote", yaml: "log:\n  level: info\nrelay:\n  event_source: \"urn:x\n", key: nil, line: 5, hint: "from line 4"),
        BadFile(name: "bad indentation", yaml: "relay:\n  poll_interval_ms: 100\n max_in_flight: 5\n", key: nil, line: 3, hint: "not valid YAML"),
        BadFile(name: "control character", yaml: "relay:\n  event_source: \"a\\nb\"\n", key: "relay.event_source", line: 2, hint: "line break"),
    ]
}

/// A `CONSENT_SYNC_*` variable that must be refused.
struct BadVariable: Sendable, CustomTestStringConvertible {
    var name: String
    var value: String
    /// The key the message must name; nil for unknown variables.
    var key: String?
    var hint: String

    var testDescription: String { "\(name)=\(value)" }

    static let all: [BadVariable] = [
        BadVariable(name: "CONSENT_SYNC_RELAY_MAX_IN_FLIGHT", value: "0", key: "relay.max_in_flight", hint: "out of range"),
        BadVariable(name: "CONSENT_SYNC_RELAY_POLL_INTERVAL_MS", value: "2s", key: "relay.poll_interval_ms", hint: "'2s' is not a whole number"),
        BadVariable(name: "CONSENT_SYNC_RETRY_MAX_ATTEMPTS", value: "", key: "retry.max_attempts", hint: "not a whole number"),
        BadVariable(name: "CONSENT_SYNC_LOG_LEVEL", value: "verbose", key: "log.level", hint: "not one of trace"),
        BadVariable(name: "CONSENT_SYNC_LOG_FORMAT", value: "text", key: "log.format", hint: "logfmt, json"),
        BadVariable(name: "CONSENT_SYNC_OPS_ENABLED", value: "perhaps", key: "ops.enabled", hint: "true or false"),
        BadVariable(name: "CONSENT_SYNC_OPS_LISTEN", value: "[::1]9464", key: "ops.listen", hint: "port is missing"),
        BadVariable(name: "CONSENT_SYNC_OPS_HEALTH_WINDOW_MS", value: "abc", key: "ops.health_window_ms", hint: "not a whole number"),
        BadVariable(name: "CONSENT_SYNC_DATABASE_URL", value: "postgresql://db/app?nonsense=1", key: "database.url", hint: "invalid URI query parameter"),
        BadVariable(name: "CONSENT_SYNC_DATABASE_PASSWORD_FILE", value: "/nonexistent/pw", key: "database.password_file", hint: "cannot read"),
        BadVariable(name: "CONSENT_SYNC_RELAY_POL_INTERVAL_MS", value: "100", key: nil, hint: "did you mean CONSENT_SYNC_RELAY_POLL_INTERVAL_MS?"),
        BadVariable(name: "CONSENT_SYNC_LOGLEVEL", value: "debug", key: nil, hint: "did you mean CONSENT_SYNC_LOG_LEVEL?"),
        BadVariable(name: "CONSENT_SYNC_DATABASE_PASSWORD", value: "hunter22", key: nil, hint: "passwords are read from files only"),
    ]
}

@Suite("Bad configuration exits 78 and says where")
struct ConfigErrorTests {
    @Test(arguments: BadFile.all)
    func badFile(_ bad: BadFile) async throws {
        try await withScratchDirectory { directory in
            try directory.write("short.key", "too-short\n")
            try directory.write("empty.pw", "\n")
            try directory.write("two-lines.pw", "first\nsecond\n")
            let config = try directory.write("consent-sync.yaml", bad.yaml.replacing("$DIR", with: directory.path))

            let result = try await ConsentSyncBinary.run(["check-config", "--config", config])

            #expect(result.status == 78, "\(result)")
            #expect(result.stdout.isEmpty, "\(result)")
            #expect(result.stderr.hasPrefix("consent-sync: configuration error"), "\(result)")
            if let key = bad.key {
                #expect(result.stderr.contains("at '\(key)'"), "\(result)")
            }
            if let line = bad.line {
                #expect(result.stderr.contains("in \(config), line \(line)"), "\(result)")
            }
            #expect(result.stderr.contains(bad.hint), "\(result)")
            #expect(!result.output.contains("hunter22"))
        }
    }

    @Test(arguments: BadVariable.all)
    func badEnvironmentVariable(_ bad: BadVariable) async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "# defaults only\n")
            let result = try await ConsentSyncBinary.run(["check-config", "--config", config], environment: [bad.name: bad.value])

            #expect(result.status == 78, "\(result)")
            #expect(result.stdout.isEmpty, "\(result)")
            #expect(result.stderr.contains("in environment variable \(bad.name)"), "\(result)")
            if let key = bad.key {
                #expect(result.stderr.contains("at '\(key)'"), "\(result)")
            }
            #expect(result.stderr.contains(bad.hint), "\(result)")
            #expect(!result.output.contains("hunter22"))
        }
    }

    @Test func everyProblemIsReportedAtOnce() async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "relay:\n  max_in_flight: 0\nlog:\n  level: loud\n")
            let result = try await ConsentSyncBinary.run(
                ["check-config", "--config", config],
                environment: ["CONSENT_SYNC_OPS_LISTEN": "nowhere"]
            )
            #expect(result.status == 78)
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 3, "\(result)")
            #expect(lines.allSatisfy { $0.contains("configuration error at '") }, "\(result)")
        }
    }

    @Test func aMissingConfigFileNamedExplicitlyIsAnError() async throws {
        let result = try await ConsentSyncBinary.run(["check-config", "--config", "/nonexistent/consent-sync.yaml"])
        #expect(result.status == 78)
        #expect(result.stderr.contains("/nonexistent/consent-sync.yaml: cannot read the file: No such file or directory") || result.stderr.contains("in /nonexistent/consent-sync.yaml: cannot read the file"), "\(result)")
    }

    @Test func theConfigEnvironmentVariableNamesTheFile() async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "log:\n  level: loud\n")
            let result = try await ConsentSyncBinary.run(["check-config"], environment: ["CONSENT_SYNC_CONFIG": config])
            #expect(result.status == 78)
            #expect(result.stderr.contains("in \(config), line 2"), "\(result)")
        }
    }

    @Test(arguments: ["migrate", "status", "subscriber list", "run"])
    func everyCommandRefusesBadConfigurationWithoutConnecting(command: String) async throws {
        try await withScratchDirectory { directory in
            // Port 1: were anything to connect, it would fail with another message and exit 1.
            let config = try directory.write("consent-sync.yaml", "database:\n  url: \"host=127.0.0.1 port=1\"\nrelay:\n  max_in_flight: many\n")
            let result = try await ConsentSyncBinary.run(command.split(separator: " ").map(String.init) + ["--config", config])
            #expect(result.status == 78, "\(result)")
            #expect(result.stderr.contains("at 'relay.max_in_flight' in \(config), line 4"), "\(result)")
            #expect(!result.stderr.contains("connect"), "\(result)")
        }
    }
}
