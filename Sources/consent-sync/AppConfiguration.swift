import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncHTTP
import ConsentSyncLogging
import ConsentSyncPostgres
import Foundation
import Logging

/// The daemon's settings: defaults, overridden by the config file, overridden by
/// `CONSENT_SYNC_*` environment variables. Secrets come from files only (`database.password_file`,
/// or the systemd credential `db-password`), never from flags.
struct AppConfiguration: Sendable {
    static let defaultPath = "/etc/consent-sync/consent-sync.yaml"

    var database: PostgresConfiguration
    var relay: Relay.Configuration
    var log: LogSettings
    var ops: OpsSettings
    var http: HTTPSettings
    /// The master keys that protect subscribers' signing secrets (`secrets.*`).
    var secretKeys: SecretKeySettings
    /// The config file that was read; nil when there was none (defaults and environment only).
    var file: String?
    /// Every key, its effective value (secrets redacted) and where it came from.
    var settings: [EffectiveSetting]
    /// Things worth saying that are not errors (a password inside `database.url`).
    var warnings: [String]
    /// Passwords found anywhere in the settings; ``redact(_:)`` removes them from text.
    var secrets: [String]

    var logLevel: Logger.Level { self.log.level }

    /// Reads and checks everything; throws a ``ConfigurationError`` listing every bad setting.
    ///
    /// The file is `path`, else `CONSENT_SYNC_CONFIG`, else ``defaultPath`` when it exists.
    static func load(path explicitPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> AppConfiguration {
        try self.resolve(path: explicitPath, environment: environment)
    }

    /// ``load(path:environment:)`` without the `async`: reads a few small files, nothing else.
    static func resolve(path explicitPath: String?, environment: [String: String]) throws(ConfigurationError) -> AppConfiguration {
        let named = explicitPath ?? environment["CONSENT_SYNC_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let document: ConfigDocument?
        if let named {
            document = ConfigDocument(path: named)
        } else if FileManager.default.fileExists(atPath: defaultPath) {
            document = ConfigDocument(path: defaultPath)
        } else {
            document = nil
        }
        var loader = ConfigLoader(document: document, environment: environment)
        let configuration = loader.build()
        guard loader.problems.isEmpty else {
            throw ConfigurationError(problems: Self.ordered(loader.problems))
        }
        return configuration
    }

    /// `text` with every known secret replaced by `********`.
    func redact(_ text: String) -> String {
        var text = text
        for secret in self.secrets.sorted(by: { $0.count > $1.count }) where secret.count >= 3 {
            text = text.replacing(secret, with: "********")
        }
        return text
    }

    /// File problems by line, then environment variables, then the rest.
    private static func ordered(_ problems: [ConfigurationError.Problem]) -> [ConfigurationError.Problem] {
        func rank(_ problem: ConfigurationError.Problem) -> (Int, Int) {
            switch problem.origin {
            case .file(_, let line)?: (0, line ?? 0)
            case .environment?: (1, 0)
            case .credential?: (2, 0)
            case .defaultValue?, nil: (3, 0)
            }
        }
        return problems.enumerated().sorted { lhs, rhs in
            let (a, b) = (rank(lhs.element), rank(rhs.element))
            return a != b ? a < b : lhs.offset < rhs.offset
        }.map(\.element)
    }
}

/// How and how much the daemon logs.
struct LogSettings: Sendable {
    /// `log.level`; put it into a `LogLevelControl` so that a reload can change it.
    var level: Logger.Level
    /// `log.format`.
    var format: LogFormat
    /// `log.subject_hash_key_file` (or the systemd credential `subject-hash-key`); nil: a
    /// random key made for this process.
    var subjectHashKeyFile: String?
    /// Hashes subject ids for log metadata with that key.
    var subjectRedactor: SubjectRedactor
}

extension LogSettings {
    /// Installs ``ConsentSyncLogHandler`` for the whole process (`LoggingSystem.bootstrap`: call
    /// once) and returns the control that sets the level of every logger; a reload sets
    /// `control.level = reloaded.log.level`. The format and hash key stay as they were at start.
    func bootstrap(environment: [String: String]? = nil) -> LogLevelControl {
        let control = LogLevelControl(self.level)
        ConsentSyncLogHandler.bootstrap(format: self.format, control: control, redactor: self.subjectRedactor, environment: environment)
        return control
    }
}

/// Where webhooks may go (`http.*`).
struct HTTPSettings: Sendable {
    /// `http.allowed_schemes`: https only unless http is named too.
    var allowedSchemes: Set<String>
    /// Loopback, private, link-local, CGNAT, multicast and other non-public addresses are
    /// refused at connect time unless `http.allow_networks` lists them.
    var addressPolicy: AddressPolicy
    /// `http.proxy`: only an explicit proxy is ever used.
    var proxy: String?

    func client(userAgent: String) -> HTTPClient.Configuration {
        HTTPClient.Configuration(proxy: proxy, userAgent: userAgent, addressPolicy: addressPolicy, allowedSchemes: allowedSchemes)
    }
}

/// The `/healthz`, `/readyz` and `/metrics` listener.
struct OpsSettings: Sendable {
    /// `ops.enabled`.
    var enabled: Bool
    /// From `ops.listen`: an IP address (IPv6 without brackets) or a host name.
    var host: String
    /// From `ops.listen`; 0 picks a free port.
    var port: Int
    /// `ops.health_window_ms`: how recently the relay must have made progress to count as healthy.
    var healthWindow: Duration
    /// `ops.receipts_token_file`: the bearer token of the receipts API; `nil`: the API is off.
    var receiptsToken: String? = nil
}

/// The master keys that encrypt subscribers' signing secrets in the database (`secrets.*`).
struct SecretKeySettings: Sendable {
    /// `secrets.master_key_file`, or the systemd credential `master-key`; nil when neither.
    var masterKeyFile: String?
    /// `secrets.previous_master_key_files`: decrypt only, during a master-key rotation.
    var previousKeyFiles: [String]
    /// Encrypts new secrets with the current key; decrypts with it and the previous ones.
    var keyring: SecretKeyring
}

/// systemd's `LoadCredential=` names looked for in `$CREDENTIALS_DIRECTORY`.
enum SystemdCredential {
    static let databasePassword = "db-password"
    static let subjectHashKey = "subject-hash-key"
    static let masterKey = "master-key"
}

extension ConfigLoader {
    /// Every key in ``ConfigSchema/keys`` order; problems are collected in ``problems``.
    mutating func build() -> AppConfiguration {
        var secrets: [String] = []
        var warnings: [String] = []

        // Database: a libpq connection string (or URI); PG* variables apply underneath it.
        // Empty means not set: DATABASE_URL, then the PG* variables.
        var (urlValue, urlOrigin) = self.text("database.url", default: "", record: false)
        if urlValue.isEmpty, let fallback = self.environment["DATABASE_URL"], !fallback.isEmpty {
            (urlValue, urlOrigin) = (fallback, .environment(variable: "DATABASE_URL"))
        }
        var database = PostgresConfiguration(connectionString: urlValue)
        if let problem = database.validationError() {
            // libpq's message, with quoted tokens (possibly parts of a password) already hidden.
            self.fail("database.url", urlOrigin, "\(problem.message); use a libpq connection string (host=db.internal dbname=app) or URI (postgresql://consent_sync@db.internal/app)")
            self.record("database.url", "(invalid, not shown)", urlOrigin)
        } else {
            let passwords = ConfigConnectionString.passwords(in: urlValue) ?? []
            secrets += passwords
            if !passwords.isEmpty {
                warnings.append("database.url contains a password; keep it in database.password_file (or ~/.pgpass) instead")
            }
            let shown = ConfigConnectionString.redacted(urlValue).map(ConfigLoader.quote) ?? "(not shown)"
            self.record("database.url", shown, urlOrigin)
        }

        let (passwordFile, passwordFileOrigin) = self.text("database.password_file", default: "", record: false)
        var password: String?
        if !passwordFile.isEmpty {
            password = self.readPassword(passwordFile, origin: passwordFileOrigin)
            self.record("database.password_file", ConfigLoader.quote(passwordFile), passwordFileOrigin)
        } else if let credential = self.credentialPath(SystemdCredential.databasePassword) {
            password = self.readPassword(credential, origin: .credential(path: credential))
            self.record("database.password_file", ConfigLoader.quote(credential), .credential(path: credential))
        } else {
            self.record("database.password_file", "(none)", passwordFileOrigin)
        }
        if let password {
            secrets.append(password)
            database = database.with("password", password)
        }

        var relay = Relay.Configuration()
        relay.listen = self.boolean("relay.listen", default: relay.listen)
        relay.pollInterval = self.milliseconds("relay.poll_interval_ms", default: relay.pollInterval, in: 10...3_600_000)
        relay.capturePollInterval = self.milliseconds("relay.capture_poll_interval_ms", default: relay.capturePollInterval, in: 1...60_000)
        relay.fanOutBatchSize = self.integer("relay.fan_out_batch_size", default: relay.fanOutBatchSize, in: 1...100_000)
        relay.claimBatchSize = self.integer("relay.claim_batch_size", default: relay.claimBatchSize, in: 1...10_000)
        relay.maxInFlight = self.integer("relay.max_in_flight", default: relay.maxInFlight, in: 1...100_000)
        relay.leaseMargin = self.milliseconds("relay.lease_margin_ms", default: relay.leaseMargin, in: 1000...3_600_000)
        relay.janitorInterval = self.milliseconds("relay.janitor_interval_ms", default: relay.janitorInterval, in: 100...3_600_000)
        relay.backlogInterval = self.milliseconds("relay.backlog_interval_ms", default: relay.backlogInterval, in: 100...3_600_000)
        relay.drainTimeout = self.milliseconds("relay.drain_timeout_ms", default: relay.drainTimeout, in: 0...3_600_000)
        let source = self.text("relay.event_source", default: "").value
        if !source.isEmpty { relay.eventSource = source }
        let disableAfter = self.integer("relay.disable_after_failing_seconds", default: 432_000, in: 0...31_536_000)
        relay.disableAfterFailing = disableAfter == 0 ? nil : .seconds(disableAfter)

        // Propagation deadlines per event type; 0: none.
        var deadlines: [String: Duration] = [:]
        for (key, type) in [
            ("withdrawn", "consent.withdrawn"), ("denied", "consent.denied"), ("granted", "consent.granted"),
            ("deleted", "consent.deleted"), ("snapshot", "consent.snapshot"), ("erased", "subject.erased"),
        ] {
            let fallback = Int(Relay.Configuration.defaultDeadlines[type]?.seconds ?? 0)
            let seconds = self.integer("deadlines.\(key)_seconds", default: fallback, in: 0...315_360_000)
            if seconds > 0 { deadlines[type] = .seconds(seconds) }
        }
        relay.deadlines = deadlines
        let payloadDays = self.integer("retention.payload_days", default: 90, in: 0...36_500)
        relay.payloadRetention = payloadDays == 0 ? nil : .seconds(payloadDays * 86_400)
        let receiptDays = self.integer("retention.receipt_days", default: 730, in: 0...36_500)
        relay.receiptRetention = receiptDays == 0 ? nil : .seconds(receiptDays * 86_400)
        if payloadDays > 0 && receiptDays > 0 && receiptDays < payloadDays {
            self.fail("retention.receipt_days", self.origin(of: "retention.receipt_days"), "\(receiptDays) is less than retention.payload_days (\(payloadDays)); receipts outlive payloads")
        }
        relay.housekeepingInterval = self.seconds("retention.interval_seconds", default: relay.housekeepingInterval, in: 1...86_400)

        var retry = RetryPolicy()
        retry.backoff.initial = self.milliseconds("retry.initial_delay_ms", default: retry.backoff.initial, in: 1...86_400_000)
        retry.backoff.maximum = self.milliseconds("retry.max_delay_ms", default: retry.backoff.maximum, in: 1...604_800_000)
        retry.backoff.minimum = min(retry.backoff.minimum, retry.backoff.initial)
        if retry.backoff.maximum < retry.backoff.initial {
            self.fail(
                "retry.max_delay_ms", self.origin(of: "retry.max_delay_ms"),
                "\(retry.backoff.maximum.milliseconds) is less than retry.initial_delay_ms (\(retry.backoff.initial.milliseconds)); use at least that"
            )
        }
        retry.maxAttempts = self.integer("retry.max_attempts", default: retry.maxAttempts, in: 1...10_000)
        retry.maxAge = self.seconds("retry.max_age_seconds", default: retry.maxAge, in: 1...31_536_000)
        retry.maxRetryAfter = self.seconds("retry.max_retry_after_seconds", default: retry.maxRetryAfter, in: 0...86_400)
        relay.retry = retry

        let level: Logger.Level = self.choice(
            "log.level", default: "info",
            ["trace": .trace, "debug": .debug, "info": .info, "notice": .notice, "warning": .warning, "error": .error, "critical": .critical]
        )
        let format: LogFormat = self.choice("log.format", default: "logfmt", ["logfmt": .logfmt, "json": .json])
        let (keyFile, keyFileOrigin) = self.text("log.subject_hash_key_file", default: "", record: false)
        var subjectHashKeyFile: String?
        var redactor: SubjectRedactor?
        if !keyFile.isEmpty {
            subjectHashKeyFile = keyFile
            redactor = self.readSubjectHashKey(keyFile, origin: keyFileOrigin)
            self.record("log.subject_hash_key_file", ConfigLoader.quote(keyFile), keyFileOrigin)
        } else if let credential = self.credentialPath(SystemdCredential.subjectHashKey) {
            subjectHashKeyFile = credential
            redactor = self.readSubjectHashKey(credential, origin: .credential(path: credential))
            self.record("log.subject_hash_key_file", ConfigLoader.quote(credential), .credential(path: credential))
        } else {
            self.record("log.subject_hash_key_file", "(none: a random key per process)", keyFileOrigin)
        }

        let opsEnabled = self.boolean("ops.enabled", default: true)
        let (listenText, listenOrigin) = self.text("ops.listen", default: "127.0.0.1:9464", record: false)
        var listen = ConfigListenAddress(host: "127.0.0.1", port: 9464)
        switch ConfigListenAddress.parse(listenText.trimmingCharacters(in: .whitespaces)) {
        case .success(let address):
            listen = address
            self.record("ops.listen", ConfigLoader.quote(address.description), listenOrigin)
        case .failure(let error):
            self.fail("ops.listen", listenOrigin, "\(ConfigLoader.show(listenText)): \(error.reason); \(ConfigListenAddress.valid)")
            self.record("ops.listen", ConfigLoader.quote(listen.description), .defaultValue)
        }
        let healthWindow = self.milliseconds("ops.health_window_ms", default: .seconds(30), in: 1000...3_600_000)
        let (tokenFile, tokenFileOrigin) = self.text("ops.receipts_token_file", default: "", record: false)
        var receiptsToken: String?
        if !tokenFile.isEmpty {
            receiptsToken = self.readToken(tokenFile, origin: tokenFileOrigin)
            if let receiptsToken { secrets.append(receiptsToken) }
            self.record("ops.receipts_token_file", ConfigLoader.quote(tokenFile), tokenFileOrigin)
        } else {
            self.record("ops.receipts_token_file", "(none: the receipts API is off)", tokenFileOrigin)
        }

        // Webhook targets: https only and public addresses only, unless allowed here.
        let (schemesText, schemesOrigin) = self.text("http.allowed_schemes", default: "https")
        var schemes: Set<String> = []
        for scheme in schemesText.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) where !scheme.isEmpty {
            if scheme == "http" || scheme == "https" {
                schemes.insert(scheme)
            } else {
                self.fail("http.allowed_schemes", schemesOrigin, "\(ConfigLoader.show(scheme)) is not a scheme consent-sync sends to; use https, or \"https, http\"")
            }
        }
        if schemes.isEmpty {
            self.fail("http.allowed_schemes", schemesOrigin, "no scheme left; use https, or \"https, http\"")
            schemes = ["https"]
        }
        let (networksText, networksOrigin) = self.text("http.allow_networks", default: "")
        var networks: [IPNetwork] = []
        for entry in networksText.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
            do {
                networks.append(try IPNetwork(entry))
            } catch {
                self.fail("http.allow_networks", networksOrigin, "\(error)")
            }
        }
        let proxy = self.text("http.proxy", default: "").value

        let secretKeys = self.secretKeySettings(warnings: &warnings)

        return AppConfiguration(
            database: database,
            relay: relay,
            log: LogSettings(level: level, format: format, subjectHashKeyFile: subjectHashKeyFile, subjectRedactor: redactor ?? .random()),
            ops: OpsSettings(enabled: opsEnabled, host: listen.host, port: listen.port, healthWindow: healthWindow, receiptsToken: receiptsToken),
            http: HTTPSettings(
                allowedSchemes: schemes,
                addressPolicy: AddressPolicy(allowedNetworks: networks),
                proxy: proxy.isEmpty ? nil : proxy
            ),
            secretKeys: secretKeys,
            file: self.document?.path,
            settings: self.settings,
            warnings: warnings,
            secrets: secrets
        )
    }

    /// `secrets.*`: reads the master key files. `check-config` shows their paths and key ids,
    /// never their contents.
    private mutating func secretKeySettings(warnings: inout [String]) -> SecretKeySettings {
        let (currentPath, currentOrigin) = self.text("secrets.master_key_file", default: "", record: false)
        var masterKeyFile: String?
        var current: MasterKey?
        if !currentPath.isEmpty {
            masterKeyFile = currentPath
            current = self.readMasterKey(currentPath, key: "secrets.master_key_file", origin: currentOrigin, warnings: &warnings)
            self.record("secrets.master_key_file", Self.describeKeyFile(currentPath, current), currentOrigin)
        } else if let credential = self.credentialPath(SystemdCredential.masterKey) {
            masterKeyFile = credential
            current = self.readMasterKey(credential, key: "secrets.master_key_file", origin: .credential(path: credential), warnings: &warnings)
            self.record("secrets.master_key_file", Self.describeKeyFile(credential, current), .credential(path: credential))
        } else {
            self.record("secrets.master_key_file", "(none)", currentOrigin)
        }

        let (previousText, previousOrigin) = self.text("secrets.previous_master_key_files", default: "", record: false)
        let previousPaths = previousText.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var previous: [MasterKey] = []
        for path in previousPaths {
            if let key = self.readMasterKey(path, key: "secrets.previous_master_key_files", origin: previousOrigin, warnings: &warnings) {
                previous.append(key)
            }
        }
        if previousPaths.isEmpty {
            self.record("secrets.previous_master_key_files", Self.quote(previousText), previousOrigin)
        } else {
            let ids = previous.count == previousPaths.count ? " (keys \(previous.map(\.id).joined(separator: ", ")))" : ""
            self.record("secrets.previous_master_key_files", Self.quote(previousPaths.joined(separator: ", ")) + ids, previousOrigin)
        }
        if current == nil && !previous.isEmpty && masterKeyFile == nil {
            self.fail(
                "secrets.previous_master_key_files", previousOrigin,
                "previous keys only decrypt; set secrets.master_key_file to the key that encrypts (the new one)"
            )
        }

        let allowPlaintext = self.boolean("secrets.allow_plaintext", default: false)
        if allowPlaintext && masterKeyFile == nil {
            warnings.append("secrets.allow_plaintext is true and no master key is configured: new signing secrets are stored unencrypted, and a database dump reveals them")
        }
        return SecretKeySettings(
            masterKeyFile: masterKeyFile,
            previousKeyFiles: previousPaths,
            keyring: SecretKeyring(current: current, previous: previous, allowsPlaintext: allowPlaintext)
        )
    }

    /// `"/etc/consent-sync/master.key" (key 1a2b3c4d)`.
    private static func describeKeyFile(_ path: String, _ key: MasterKey?) -> String {
        Self.quote(path) + (key.map { " (key \($0.id))" } ?? "")
    }

    /// A master key file: 32 bytes as base64 (or 64 hex digits). Messages name the file, never its contents.
    private mutating func readMasterKey(_ path: String, key: String, origin: ConfigOrigin, warnings: inout [String]) -> MasterKey? {
        guard let bytes = self.readSecret(path, key: key, origin: origin, limit: 4096) else { return nil }
        do {
            let masterKey = try MasterKey(fileContents: bytes, path: path)
            if let permissions = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int,
               permissions & 0o077 != 0 {
                warnings.append("\(key): '\(path)' can be read by other users; chmod 600 it (or use the systemd credential \(SystemdCredential.masterKey))")
            }
            return masterKey
        } catch {
            self.fail(key, origin, error.description)
            return nil
        }
    }

    private func origin(of key: String) -> ConfigOrigin {
        self.settings.last { $0.key == key }?.origin ?? .defaultValue
    }

    /// `$CREDENTIALS_DIRECTORY/<name>` when systemd provided that credential.
    private func credentialPath(_ name: String) -> String? {
        guard let directory = self.environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty else { return nil }
        let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// The password: the file's only line. Messages name the file, never its contents.
    private mutating func readPassword(_ path: String, origin: ConfigOrigin) -> String? {
        guard var bytes = self.readSecret(path, key: "database.password_file", origin: origin, limit: 64 * 1024) else { return nil }
        Self.dropTrailingNewlines(&bytes)
        guard !bytes.isEmpty else {
            self.fail("database.password_file", origin, "'\(path)' is empty; put the password in it")
            return nil
        }
        guard !bytes.contains(0x0A), !bytes.contains(0x0D), !bytes.contains(0) else {
            self.fail("database.password_file", origin, "'\(path)' holds more than one line; put only the password in it")
            return nil
        }
        guard let password = String(validating: bytes, as: UTF8.self) else {
            self.fail("database.password_file", origin, "'\(path)' is not UTF-8 text")
            return nil
        }
        return password
    }

    /// The receipts API's bearer token: one line of at least 32 printable ASCII characters.
    private mutating func readToken(_ path: String, origin: ConfigOrigin) -> String? {
        guard var bytes = self.readSecret(path, key: "ops.receipts_token_file", origin: origin, limit: 4096) else { return nil }
        Self.dropTrailingNewlines(&bytes)
        guard bytes.count >= 32, bytes.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            self.fail(
                "ops.receipts_token_file", origin,
                "'\(path)' must hold one token of at least 32 printable ASCII characters, no spaces (e.g. openssl rand -hex 32 > \(path))"
            )
            return nil
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The key's bytes, at least ``SubjectRedactor/minimumKeyLength`` of them.
    private mutating func readSubjectHashKey(_ path: String, origin: ConfigOrigin) -> SubjectRedactor? {
        guard var bytes = self.readSecret(path, key: "log.subject_hash_key_file", origin: origin, limit: 4096) else { return nil }
        Self.dropTrailingNewlines(&bytes)
        guard bytes.count >= SubjectRedactor.minimumKeyLength else {
            self.fail(
                "log.subject_hash_key_file", origin,
                "'\(path)' holds \(bytes.count) bytes; use at least \(SubjectRedactor.minimumKeyLength) (e.g. openssl rand -hex 32 > \(path))"
            )
            return nil
        }
        return SubjectRedactor(key: bytes)
    }

    private mutating func readSecret(_ path: String, key: String, origin: ConfigOrigin, limit: Int) -> [UInt8]? {
        do {
            return try readFile(path, limit: limit)
        } catch {
            self.fail(key, origin, "cannot read '\(path)': \(error)")
            return nil
        }
    }

    private static func dropTrailingNewlines(_ bytes: inout [UInt8]) {
        while let last = bytes.last, last == 0x0A || last == 0x0D {
            bytes.removeLast()
        }
    }
}
