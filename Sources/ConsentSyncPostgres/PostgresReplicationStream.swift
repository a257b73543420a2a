import Dispatch
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A logical replication stream from a slot (the walsender protocol, `START_REPLICATION ...
/// LOGICAL`), on a connection of its own (`replication=database`).
///
/// The server keeps its decoding session for the life of the stream, so nothing is decoded
/// twice (the SQL functions `pg_logical_slot_*_changes` start again from the slot's restart
/// point on every call). ``read(timeout:)`` returns the output plugin's messages in order and
/// answers the server's keepalives; ``confirm(_:)`` reports how far the consumer has durably
/// processed, which is where the slot restarts after a reconnect. All libpq calls run on the
/// stream's own serial queue.
public final class PostgresReplicationStream: Sendable {
    private let queue: DispatchQueue
    private let handle: LibPQConnection
    /// The LSN last confirmed (sent as written, flushed and applied in status updates).
    private let confirmed: Atomic<UInt64>
    private let lastStatus = Mutex(ContinuousClock.now)

    private init(handle: LibPQConnection, queue: DispatchQueue, start: UInt64) {
        self.handle = handle
        self.queue = queue
        self.confirmed = Atomic(start)
    }

    /// Connects and starts streaming `slot` from `start` (the server begins at the slot's
    /// confirmed position when that is later) with the plugin's `options`.
    public static func start(
        _ configuration: PostgresConfiguration,
        slot: String,
        from start: UInt64,
        options: [(String, String)],
        logger: Logger
    ) async throws -> PostgresReplicationStream {
        let queue = DispatchQueue(label: "consent-sync.postgres.replication")
        let quote: (String) -> String = { "'" + $0.replacingOccurrences(of: "'", with: "''") + "'" }
        let identifier = "\"" + slot.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        let optionList = options.map { "\"\($0.0.replacingOccurrences(of: "\"", with: "\"\""))\" \(quote($0.1))" }.joined(separator: ", ")
        let command = "START_REPLICATION SLOT \(identifier) LOGICAL \(Self.format(start))" + (options.isEmpty ? "" : " (\(optionList))")
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                let result = LibPQConnection.connect(configuration.with("replication", "database"), logger: logger).flatMap { handle in
                    handle.startCopyBoth(command).map { PostgresReplicationStream(handle: handle, queue: queue, start: start) }
                }
                continuation.resume(with: result.mapError { $0 as any Error })
            }
        }
    }

    /// The output plugin's messages that arrive within `timeout` (all that are there once the
    /// first arrived; none when nothing did). Keepalives are answered here, and a status update
    /// goes out at least every 10 seconds.
    public func read(timeout: Duration) async throws -> [[UInt8]] {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: self.readBlocking(timeout: timeout).mapError { $0 as any Error })
            }
        }
    }

    /// Reports `lsn` as written, flushed and applied: the slot may let go of what precedes it.
    public func confirm(_ lsn: UInt64) async throws {
        confirmed.store(lsn, ordering: .releasing)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            queue.async {
                continuation.resume(with: self.sendStatus(replyRequested: false).mapError { $0 as any Error })
            }
        }
    }

    /// Ends the stream and closes its connection.
    public func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.handle.finish()
                continuation.resume()
            }
        }
    }

    /// `X/Y`, as PostgreSQL writes an LSN.
    public static func format(_ lsn: UInt64) -> String {
        String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    /// Parses `X/Y`; `nil` when it is not an LSN.
    public static func parse(_ text: String) -> UInt64? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let high = UInt64(parts[0], radix: 16), let low = UInt64(parts[1], radix: 16),
              high <= 0xFFFF_FFFF, low <= 0xFFFF_FFFF else { return nil }
        return high << 32 | low
    }

    // MARK: On the queue

    private func readBlocking(timeout: Duration) -> Result<[[UInt8]], PostgresError> {
        var payloads: [[UInt8]] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            switch handle.readCopyData() {
            case .failure(let error):
                return .failure(error)
            case .success(let messages):
                for message in messages {
                    guard let kind = message.first else { continue }
                    if kind == UInt8(ascii: "w"), message.count >= 25 {
                        payloads.append(Array(message[25...]))     // 'w', start, end, send time, then the data
                    } else if kind == UInt8(ascii: "k"), message.count >= 18, message[17] != 0 {
                        if case .failure(let error) = sendStatus(replyRequested: false) { return .failure(error) }
                    }
                }
            }
            if ContinuousClock.now - lastStatus.withLock({ $0 }) > .seconds(10) {
                if case .failure(let error) = sendStatus(replyRequested: false) { return .failure(error) }
            }
            let left = deadline - ContinuousClock.now
            if !payloads.isEmpty || left <= .zero { return .success(payloads) }
            var descriptor = pollfd(fd: handle.socket, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(max(1, min(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000, 1000)))
            _ = poll(&descriptor, 1, milliseconds)
        }
    }

    private func sendStatus(replyRequested: Bool) -> Result<Void, PostgresError> {
        let lsn = confirmed.load(ordering: .acquiring)
        let micros = Int64((Date().timeIntervalSince1970 - 946_684_800) * 1_000_000)  // since 2000-01-01
        var bytes: [UInt8] = [UInt8(ascii: "r")]
        for value in [lsn, lsn, lsn, UInt64(bitPattern: micros)] {
            withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(replyRequested ? 1 : 0)
        lastStatus.withLock { $0 = .now }
        return handle.writeCopyData(bytes)
    }
}
