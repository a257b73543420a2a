import Foundation
import Testing

/// Every key `config/consent-sync.yaml` must document and `check-config` must print.
let allConfigKeys = [
    "database.url", "database.password_file",
    "relay.poll_interval_ms", "relay.fan_out_batch_size", "relay.claim_batch_size", "relay.max_in_flight",
    "relay.lease_margin_ms", "relay.janitor_interval_ms", "relay.backlog_interval_ms", "relay.drain_timeout_ms",
    "relay.event_source",
    "retry.initial_delay_ms", "retry.max_delay_ms", "retry.max_attempts", "retry.max_age_seconds",
    "retry.max_retry_after_seconds",
    "log.level", "log.format", "log.subject_hash_key_file",
    "ops.enabled", "ops.listen", "ops.health_window_ms",
]

/// The row of `check-config` output for `key`, split into value and source.
func row(_ output: String, _ key: String) -> (value: String, source: String)? {
    for line in output.split(separator: "\n") where line.hasPrefix(key + " ") {
        let columns = line.split(separator: "  ", omittingEmptySubsequences: true).map { $0.trimmingCharacters(in: .whitespaces) }
        guard columns.count >= 3 else { return nil }
        return (columns[1], columns[2])
    }
    return nil
}

@Suite("check-config")
struct CheckConfigTests {
    static let exampleConfig = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/consent-sync.yaml").path

    @Test func theDocumentedExampleIsValidAndSetsEveryKey() async throws {
        let result = try await ConsentSyncBinary.run(["check-config", "--config", Self.exampleConfig])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.isEmpty, "\(result)")
        #expect(result.stdout.hasSuffix("configuration OK\n"))
        for key in allConfigKeys {
            let found = row(result.stdout, key)
            #expect(found?.source.hasPrefix(Self.exampleConfig + ":") == true, "\(key) is not set in the example: \(result.stdout)")
        }
    }

    @Test func theExampleHoldsTheDefaults() async throws {
        try await withScratchDirectory { directory in
            let empty = try directory.write("empty.yaml", "")
            let defaults = try await ConsentSyncBinary.run(["check-config", "--config", empty])
            let example = try await ConsentSyncBinary.run(["check-config", "--config", Self.exampleConfig])
            #expect(defaults.status == 0, "\(defaults)")
            for key in allConfigKeys where key != "log.subject_hash_key_file" && key != "database.password_file" {
                #expect(row(defaults.stdout, key)?.source == "default", "\(key): \(defaults.stdout)")
                #expect(row(defaults.stdout, key)?.value == row(example.stdout, key)?.value, "\(key) differs from its default in the example")
            }
        }
    }

    @Test func sourcesAreDefaultFileLineOrEnvironmentVariable() async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "# first line\nrelay:\n  max_in_flight: 64\n  poll_interval_ms: 500\nops:\n  listen: \"[::1]:9000\"\n  enabled: false\n")
            let result = try await ConsentSyncBinary.run(
                ["check-config", "--config", config],
                environment: [
                    "CONSENT_SYNC_RELAY_POLL_INTERVAL_MS": "250",
                    "CONSENT_SYNC_LOG_FORMAT": "json",
                    "CONSENT_SYNC_TEST_WHATEVER": "ignored",
                    "CONSENT_SYNC_CONFIG": "/ignored/because/--config/wins.yaml",
                ]
            )
            #expect(result.status == 0, "\(result)")
            #expect(row(result.stdout, "relay.max_in_flight")! == ("64", "\(config):3"))
            #expect(row(result.stdout, "relay.poll_interval_ms")! == ("250", "env CONSENT_SYNC_RELAY_POLL_INTERVAL_MS"))
            #expect(row(result.stdout, "log.format")! == ("\"json\"", "env CONSENT_SYNC_LOG_FORMAT"))
            #expect(row(result.stdout, "ops.listen")! == ("\"[::1]:9000\"", "\(config):6"))
            #expect(row(result.stdout, "ops.enabled")! == ("false", "\(config):7"))
            #expect(row(result.stdout, "retry.max_attempts")! == ("50", "default"))
            #expect(result.stdout.contains("file: \(config)"))
        }
    }

    @Test func databaseURLFallsBackToDATABASE_URL() async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "database:\n  url: \"\"\n")
            let result = try await ConsentSyncBinary.run(["check-config", "--config", config], environment: ["DATABASE_URL": "postgresql://app@db.internal/app"])
            #expect(row(result.stdout, "database.url")! == ("\"postgresql://app@db.internal/app\"", "env DATABASE_URL"))
        }
    }
}

@Suite("Secrets never appear in output")
struct SecretRedactionTests {
    static let secret = "S3cr3t-Hunter2-Passw0rd"

    /// Runs check-config and a command that fails to connect (port 1), and checks neither prints the secret.
    func expectNoSecret(config: String, environment: [String: String] = [:], expectWarning: Bool = false) async throws -> String {
        let check = try await ConsentSyncBinary.run(["check-config", "--config", config], environment: environment)
        #expect(check.status == 0, "\(check)")
        #expect(!check.output.contains(Self.secret), "\(check)")
        #expect(check.stdout.contains("configuration OK"))
        if expectWarning {
            #expect(check.stdout.contains("warning: database.url contains a password"), "\(check)")
        }
        let failing = try await ConsentSyncBinary.run(["migrate", "--config", config], environment: environment)
        #expect(failing.status == 1, "\(failing)")
        #expect(failing.stderr.contains("cannot connect"), "\(failing)")
        #expect(!failing.output.contains(Self.secret), "\(failing)")
        return check.stdout
    }

    @Test func passwordFile() async throws {
        try await withScratchDirectory { directory in
            let passwordFile = try directory.write("db.pw", Self.secret + "\n")
            let config = try directory.write(
                "consent-sync.yaml",
                "database:\n  url: \"host=127.0.0.1 port=1 connect_timeout=2 user=app\"\n  password_file: \(passwordFile)\n"
            )
            let output = try await expectNoSecret(config: config)
            #expect(row(output, "database.password_file")! == ("\"\(passwordFile)\"", "\(config):3"))
        }
    }

    @Test func systemdCredential() async throws {
        try await withScratchDirectory { directory in
            let credentials = directory.appendingPathComponent("credentials")
            try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
            try credentials.write("db-password", Self.secret)
            let config = try directory.write("consent-sync.yaml", "database:\n  url: \"host=127.0.0.1 port=1 connect_timeout=2 user=app\"\n")
            let output = try await expectNoSecret(config: config, environment: ["CREDENTIALS_DIRECTORY": credentials.path])
            let path = credentials.appendingPathComponent("db-password").path
            #expect(row(output, "database.password_file")! == ("\"\(path)\"", "credential \(path)"))
        }
    }

    @Test func aPasswordFileWinsOverTheCredential() async throws {
        try await withScratchDirectory { directory in
            let credentials = directory.appendingPathComponent("credentials")
            try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
            try credentials.write("db-password", "credential-password")
            let passwordFile = try directory.write("db.pw", Self.secret)
            let config = try directory.write("consent-sync.yaml", "database:\n  url: \"host=127.0.0.1 port=1 connect_timeout=2\"\n")
            let output = try await expectNoSecret(
                config: config,
                environment: ["CREDENTIALS_DIRECTORY": credentials.path, "CONSENT_SYNC_DATABASE_PASSWORD_FILE": passwordFile]
            )
            #expect(row(output, "database.password_file")! == ("\"\(passwordFile)\"", "env CONSENT_SYNC_DATABASE_PASSWORD_FILE"))
            #expect(!output.contains("credential-password"))
        }
    }

    @Test(arguments: [
        "postgresql://app:\(secret)@127.0.0.1:1/app?connect_timeout=2",
        "postgresql://app@127.0.0.1:1/app?connect_timeout=2&password=\(secret)",
        // libpq ends the user info at the first '@' before any '/': '?' and ':' belong to the password.
        "postgresql://app:pa?ss:\(secret)@127.0.0.1:1/app?connect_timeout=2",
        "host=127.0.0.1 port=1 connect_timeout=2 user=app password=\(secret)",
        "host=127.0.0.1 port=1 connect_timeout=2 user=app password='\(secret)'",
    ])
    func passwordInTheURL(url: String) async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", "database:\n  url: \"\(url)\"\n")
            let output = try await expectNoSecret(config: config, expectWarning: true)
            #expect(row(output, "database.url")?.value.contains("********") == true, "\(output)")
            // The same through the environment.
            let empty = try directory.write("empty.yaml", "")
            _ = try await expectNoSecret(config: empty, environment: ["CONSENT_SYNC_DATABASE_URL": url], expectWarning: true)
        }
    }

    @Test(arguments: [
        ("a bad URL with a password", "database:\n  url: \"postgresql://app:\(secret)@db/app?nonsense=1\"\n"),
        ("a bad keyword string with a password", "database:\n  url: \"host=db password=\(secret) port\"\n"),
        ("a password and another bad key", "database:\n  url: \"postgresql://app:\(secret)@db/app\"\nrelay:\n  max_in_flight: 0\n"),
        ("a YAML error on the password's line", "database:\n  url: \"postgresql://app:\(secret)@db/app\n"),
        ("a password under an unknown key", "database:\n  password: \(secret)\n"),
        ("an unknown key holding a password", "database:\n  pasword: \(secret)\n"),
    ])
    func failingConfigurationsDoNotEchoThePassword(name: String, yaml: String) async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("consent-sync.yaml", yaml)
            for command in ["check-config", "migrate"] {
                let result = try await ConsentSyncBinary.run([command, "--config", config])
                #expect(result.status == 78, "\(name): \(result)")
                #expect(!result.output.contains(Self.secret), "\(name): \(result)")
            }
        }
    }

    @Test func aPasswordInTheEnvironmentIsRefusedAndNotEchoed() async throws {
        try await withScratchDirectory { directory in
            let config = try directory.write("empty.yaml", "")
            let result = try await ConsentSyncBinary.run(["check-config", "--config", config], environment: ["CONSENT_SYNC_DATABASE_PASSWORD": Self.secret])
            #expect(result.status == 78)
            #expect(!result.output.contains(Self.secret))
        }
    }

    @Test func noCommandAcceptsAPasswordFlag() async throws {
        let result = try await ConsentSyncBinary.run(["migrate", "--password", Self.secret])
        #expect(result.status == 64, "\(result)")
        #expect(result.stderr.contains("Unknown option '--password'"), "\(result)")
    }
}
