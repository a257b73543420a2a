#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ConsentSyncPostgres
import Foundation

/// A PostgreSQL cluster of a scenario's own, in a temporary folder on a free port of
/// 127.0.0.1 (trust authentication), so that the scenario can restart or stop it without
/// breaking the tests that share the server of `scripts/with-postgres.sh`.
///
/// Runs as the `postgres` OS user when the tests run as root (initdb refuses root).
/// Binaries: `CONSENT_SYNC_TEST_PGBIN`, else the newest `/usr/lib/postgresql/*/bin`.
public final class PrivateCluster: Sendable {
    public enum StopMode: String, Sendable {
        case smart, fast, immediate
    }

    public let port: Int
    /// The folder holding `data/`, the socket and `server.log`.
    public let directory: String
    private let binaries: String
    private let runAs: [String]

    private init(port: Int, directory: String, binaries: String, runAs: [String]) {
        self.port = port
        self.directory = directory
        self.binaries = binaries
        self.runAs = runAs
    }

    /// The folder of `initdb` and `pg_ctl`, or nil when PostgreSQL's server binaries are not installed.
    public static var binaryDirectory: String? {
        if let configured = ProcessInfo.processInfo.environment["CONSENT_SYNC_TEST_PGBIN"],
           FileManager.default.isExecutableFile(atPath: configured + "/initdb") {
            return configured
        }
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return versions.sorted { $0.compare($1, options: .numeric) == .orderedAscending }
            .map { "\(root)/\($0)/bin" }
            .last { FileManager.default.isExecutableFile(atPath: $0 + "/initdb") }
    }

    /// Creates and starts a cluster, runs `body`, and removes the cluster, also when `body` throws.
    public static func with<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PrivateCluster) async throws -> T
    ) async throws -> T {
        let cluster = try await Self.create()
        do {
            let result = try await body(cluster)
            await cluster.destroy()
            return result
        } catch {
            await cluster.destroy()
            throw error
        }
    }

    static func create() async throws -> PrivateCluster {
        guard let binaries = Self.binaryDirectory else {
            throw ScenarioError("PostgreSQL server binaries not found (set CONSENT_SYNC_TEST_PGBIN or run scripts/install-deps.sh)")
        }
        var template = Array("/tmp/consent-sync-scenario-pg.XXXXXX".utf8CString)
        guard let created = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ScenarioError("mkdtemp failed: errno \(errno)")
        }
        let directory = String(cString: created)
        var runAs: [String] = []
        if getuid() == 0 {
            // initdb refuses root: the cluster belongs to the postgres OS user, as in with-postgres.sh.
            guard let user = getpwnam("postgres") else {
                try? FileManager.default.removeItem(atPath: directory)
                throw ScenarioError("running as root but there is no 'postgres' user to run the cluster")
            }
            chown(directory, user.pointee.pw_uid, user.pointee.pw_gid)
            chmod(directory, 0o700)
            runAs = ["/usr/sbin/runuser", "-u", "postgres", "--"]
        }
        let cluster = PrivateCluster(port: try Self.freePort(), directory: directory, binaries: binaries, runAs: runAs)
        do {
            try await cluster.tool("initdb", ["-D", "\(directory)/data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"])
            try await cluster.start()
        } catch {
            await cluster.destroy()
            throw error
        }
        return cluster
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<database>`
    public func url(database: String = "postgres") -> String {
        "postgresql://postgres@127.0.0.1:\(self.port)/\(database)"
    }

    public func start() async throws {
        // No synchronous_commit=off: an immediate stop must not lose acknowledged commits.
        try await self.tool("pg_ctl", [
            "-D", "\(directory)/data", "-l", "\(directory)/server.log", "-w", "-t", "60", "start", "-o",
            "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off",
        ])
    }

    public func stop(_ mode: StopMode) async throws {
        try await self.tool("pg_ctl", ["-D", "\(directory)/data", "-m", mode.rawValue, "-w", "-t", "60", "stop"])
    }

    public func restart(_ mode: StopMode) async throws {
        try await self.stop(mode)
        try await self.start()
    }

    /// Creates a migrated database on this cluster.
    public func createDatabase(_ name: String) async throws -> ScenarioDatabase {
        let admin = try await PostgresConnection.connect(PostgresConfiguration(connectionString: self.url()), logger: ScenarioDatabase.logger)
        do {
            try await admin.execute("CREATE DATABASE \(try admin.escapeIdentifier(name))")
            await admin.close()
        } catch {
            await admin.close()
            throw error
        }
        var environment = [
            "CONSENT_SYNC_DATABASE_URL": self.url(database: name),
            "PGHOST": "127.0.0.1", "PGPORT": String(self.port), "PGUSER": "postgres", "PGDATABASE": name,
        ]
        // The same loopback allowance as TestDatabase.daemonEnvironment: receivers are on 127.0.0.1.
        environment["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES"] = "https, http"
        environment["CONSENT_SYNC_HTTP_ALLOW_NETWORKS"] = "127.0.0.0/8, ::1/128"
        let database = ScenarioDatabase(
            name: name,
            configuration: PostgresConfiguration(connectionString: self.url(database: name)),
            daemonEnvironment: environment
        )
        try await database.migrate()
        return database
    }

    /// Stops the server at once and removes its folder; errors are ignored.
    func destroy() async {
        try? await self.stop(.immediate)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The last lines of the server log, for failure messages.
    public var logTail: String {
        let text = (try? String(contentsOfFile: "\(directory)/server.log", encoding: .utf8)) ?? ""
        return String(text.suffix(3000))
    }

    private func tool(_ name: String, _ arguments: [String]) async throws {
        // Through Python's subprocess with close_fds: the server that `pg_ctl start` leaves
        // behind must not inherit this process's descriptors. (It would otherwise keep the
        // pipe by which Foundation's Process notices the child's exit, so that `pg_ctl` never
        // seemed to end, and it would hold on to the sockets of receivers and connections.)
        let command = ["/usr/bin/env", "python3", "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], close_fds=True).returncode)"]
            + self.runAs + ["\(binaries)/\(name)"] + arguments
        let result = try await HelperProgram.run(command[0], Array(command.dropFirst()), mergingStandardError: true)
        guard result.status == 0 else {
            throw ScenarioError("\(name) failed (\(result.status)): \(result.output.suffix(2000))\n\(self.logTail)")
        }
    }

    /// A port outside the ephemeral range, so that nothing else takes it while the server is stopped.
    private static func freePort() throws -> Int {
        for _ in 0..<200 {
            let port = Int.random(in: 20_000..<32_000)
            #if canImport(Darwin)
            let fd = socket(AF_INET, SOCK_STREAM, 0)
            #else
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            #endif
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr = in_addr(s_addr: inet_addr("127.0.0.1"))
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if bound == 0 { return port }
        }
        throw ScenarioError("no free port for a private PostgreSQL cluster")
    }
}
