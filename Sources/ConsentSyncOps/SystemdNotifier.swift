#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Speaks systemd's notification protocol (`sd_notify(3)`) directly, without libsystemd:
/// one datagram of `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET`.
///
/// When the daemon does not run under systemd (no `NOTIFY_SOCKET`) every send is a no-op.
///
/// This file is the only place in consent-sync above the C targets that touches a C pointer:
/// the socket address and the payload are handed to `sendto` for the length of that call only.
public struct SystemdNotifier: Sendable {
    /// Where `NOTIFY_SOCKET` points.
    public enum Address: Sendable, Hashable {
        /// A socket file (`/run/systemd/notify`).
        case path(String)
        /// A socket in the abstract namespace (`@name` in `NOTIFY_SOCKET`), without the `@`.
        case abstract(String)
    }

    /// One notification; several can go in one datagram.
    public enum Message: Sendable, Hashable {
        /// `READY=1`: start-up (or a reload) is complete.
        case ready
        /// `STATUS=…`: a one-line status shown by `systemctl status` (line breaks become spaces).
        case status(String)
        /// `WATCHDOG=1`: the service is alive.
        case watchdog
        /// `STOPPING=1`: shutdown has begun.
        case stopping
        /// `RELOADING=1` with `MONOTONIC_USEC=…` (CLOCK_MONOTONIC, as `Type=notify-reload` requires).
        case reloading(monotonicMicroseconds: UInt64)

        /// The message's line(s) in the datagram.
        public var text: String {
            switch self {
            case .ready: "READY=1"
            case .status(let status):
                "STATUS=" + String(status.map { $0.isNewline ? " " : $0 })
            case .watchdog: "WATCHDOG=1"
            case .stopping: "STOPPING=1"
            case .reloading(let microseconds): "RELOADING=1\nMONOTONIC_USEC=\(microseconds)"
            }
        }
    }

    /// The notification socket, or nil when not running under systemd (sends do nothing).
    public let address: Address?
    /// `WATCHDOG_USEC` when the watchdog is enabled for this process, else nil.
    public let watchdogInterval: Duration?

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `environment` (the process's by default).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.init(environment: environment, processID: Int(ProcessInfo.processInfo.processIdentifier))
    }

    /// As ``init(environment:)``, with the process id that `WATCHDOG_PID` is compared with.
    public init(environment: [String: String], processID: Int) {
        self.address = environment["NOTIFY_SOCKET"].flatMap(Self.address(notifySocket:))
        self.watchdogInterval = Self.watchdogInterval(environment: environment, processID: processID)
    }

    /// A notifier for an explicit socket file (nil: disabled) and watchdog interval, leaving the
    /// process environment alone (tests, or a supervisor other than systemd).
    public init(socketPath: String?, watchdogInterval: Duration? = nil) {
        self.init(address: socketPath.map(Address.path), watchdogInterval: watchdogInterval)
    }

    /// A notifier for an explicit address (nil: disabled) and watchdog interval.
    public init(address: Address?, watchdogInterval: Duration?) {
        self.address = address
        self.watchdogInterval = watchdogInterval
    }

    /// True when notifications go somewhere.
    public var isEnabled: Bool { address != nil }

    /// Parses `NOTIFY_SOCKET`: an absolute path, or `@name` for the abstract namespace.
    /// Anything else (empty, relative, `vsock:`…) is not supported and yields nil.
    public static func address(notifySocket value: String) -> Address? {
        if value.hasPrefix("/") { return .path(value) }
        if value.hasPrefix("@"), value.count > 1 { return .abstract(String(value.dropFirst())) }
        return nil
    }

    /// `WATCHDOG_USEC` as a duration, unless absent, not a positive number, or meant for another
    /// process (`WATCHDOG_PID` set and not `processID`).
    public static func watchdogInterval(environment: [String: String], processID: Int) -> Duration? {
        guard let text = environment["WATCHDOG_USEC"], let microseconds = UInt64(text), microseconds > 0 else { return nil }
        if let pidText = environment["WATCHDOG_PID"], !pidText.isEmpty {
            guard let pid = Int(pidText), pid == processID else { return nil }
        }
        return .microseconds(Int64(clamping: microseconds))
    }

    /// The datagram for `messages`: their lines joined by newlines.
    public static func datagram(_ messages: [Message]) -> String {
        messages.map(\.text).joined(separator: "\n")
    }

    /// Sends one message; nothing when disabled.
    public func send(_ message: Message) throws(SystemdNotifierError) {
        try send([message])
    }

    /// Sends `messages` in one datagram; nothing when disabled or `messages` is empty.
    public func send(_ messages: [Message]) throws(SystemdNotifierError) {
        guard let address, !messages.isEmpty else { return }
        try Self.sendDatagram(Array(Self.datagram(messages).utf8), to: address)
    }

    /// CLOCK_MONOTONIC now, in microseconds, as systemd wants it in `MONOTONIC_USEC`.
    ///
    /// Swift's `ContinuousClock` counts on Linux with CLOCK_BOOTTIME, which differs after a suspend.
    public static func monotonicMicroseconds() -> UInt64 {
        #if canImport(Glibc)
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        #else
        return UInt64(ProcessInfo.processInfo.systemUptime * 1_000_000)
        #endif
    }

    // MARK: - The socket

    private static func sendDatagram(_ payload: [UInt8], to address: Address) throws(SystemdNotifierError) {
        #if canImport(Glibc)
        // sun_path bytes: a file path ends with NUL; an abstract name starts with one and has no terminator.
        let pathBytes: [UInt8]
        switch address {
        case .path(let path): pathBytes = Array(path.utf8) + [0]
        case .abstract(let name): pathBytes = [0] + Array(name.utf8)
        }
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        guard pathBytes.count <= MemoryLayout.size(ofValue: socketAddress.sun_path) else {
            throw SystemdNotifierError(code: .addressTooLong, errno: nil)
        }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { $0.copyBytes(from: pathBytes) }
        let addressLength = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + pathBytes.count)

        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SystemdNotifierError(code: .socketFailed, errno: errno) }
        defer { close(descriptor) }

        while true {
            let sent = withUnsafePointer(to: &socketAddress) { addressPointer in
                addressPointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { genericAddress in
                    payload.withUnsafeBytes { bytes in
                        sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT), genericAddress, addressLength)
                    }
                }
            }
            if sent >= 0 { return }
            let error = errno
            if error == EINTR { continue }
            throw SystemdNotifierError(code: .sendFailed, errno: error)
        }
        #else
        throw SystemdNotifierError(code: .unsupportedPlatform, errno: nil)
        #endif
    }
}

/// A notification that could not be sent. Harmless to the daemon's work; worth a warning.
public struct SystemdNotifierError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public enum Code: Sendable, Hashable {
        case addressTooLong
        case socketFailed
        case sendFailed
        case unsupportedPlatform
    }

    public var code: Code
    /// The C library's error number, when a system call failed.
    public var errno: Int32?

    public var description: String {
        let what = switch code {
        case .addressTooLong: "NOTIFY_SOCKET is longer than a Unix socket address can be"
        case .socketFailed: "could not open a Unix datagram socket for sd_notify"
        case .sendFailed: "could not send to NOTIFY_SOCKET"
        case .unsupportedPlatform: "sd_notify is only supported on Linux"
        }
        guard let errno else { return what }
        #if canImport(Glibc)
        return "\(what): \(String(cString: strerror(errno))) (errno \(errno))"
        #else
        return "\(what) (errno \(errno))"
        #endif
    }
}
