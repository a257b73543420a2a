import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Stops a listener thread from any thread: a flag plus a byte in a pipe that its `poll()` watches.
final class ListenerControl: Sendable {
    private let stopped = Atomic(false)
    /// `-1` when no pipe could be made; the runner then polls in short slices.
    let wakeReadFD: Int32
    private let wakeWriteFD: Int32

    init() {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            for fd in fds {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
        }
        self.wakeReadFD = fds[0]
        self.wakeWriteFD = fds[1]
    }

    /// Both ends stay open until neither the runner nor a stopper can use them.
    deinit {
        if self.wakeReadFD >= 0 { close(self.wakeReadFD) }
        if self.wakeWriteFD >= 0 { close(self.wakeWriteFD) }
    }

    var isStopped: Bool {
        self.stopped.load(ordering: .acquiring)
    }

    func stop() {
        guard !self.stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if self.wakeWriteFD >= 0 {
            var byte: UInt8 = 1
            _ = write(self.wakeWriteFD, &byte, 1)
        }
    }
}

/// The listener's thread body: executes `ListenerStateMachine` actions with blocking libpq calls and
/// `poll()`. Lives on its own thread for the whole listening session.
struct ListenerRunner: Sendable {
    private typealias Action = ListenerStateMachine.Action

    /// How long one `poll()` may sleep when there is no wake pipe to interrupt it.
    private static let pollSliceWithoutPipe: Duration = .milliseconds(250)

    private let configuration: PostgresConfiguration
    private let channels: [String]
    private let logger: Logger
    private let control: ListenerControl
    private let continuation: AsyncStream<PostgresListener.Event>.Continuation
    private var machine: ListenerStateMachine
    private var connection: LibPQConnection?

    init(
        listener: PostgresListener,
        control: ListenerControl,
        continuation: AsyncStream<PostgresListener.Event>.Continuation
    ) {
        self.configuration = listener.configuration
        self.channels = listener.channels
        self.logger = listener.logger
        self.control = control
        self.continuation = continuation
        self.machine = ListenerStateMachine(backoff: listener.backoff, keepalive: listener.keepalive)
    }

    mutating func run() {
        self.logger.debug("postgres listener started", metadata: ["postgres.channels": "\(self.channels)"])
        var action = self.machine.start()
        while !self.control.isStopped {
            switch action {
            case .connect:
                switch LibPQConnection.connect(self.configuration, logger: self.logger) {
                case .success(let connection):
                    self.connection = connection
                    action = self.machine.connected()
                case .failure(let error):
                    action = self.machine.connectFailed(reason: error.message)
                }

            case .listen:
                action = self.listen()

            case .emitListening(let reconnected):
                self.logger.info("listening for postgres notifications", metadata: [
                    "postgres.channels": "\(self.channels)",
                    "postgres.reconnected": "\(reconnected)",
                    "postgres.backend_pid": "\(self.connection?.backendPID ?? 0)",
                ])
                self.continuation.yield(.listening(reconnected: reconnected))
                action = self.waitForInput()

            case .wait:
                // Only reached when the machine ignored an event out of place; start over rather than spin.
                action = self.machine.listening ? self.waitForInput() : self.machine.restart(reason: "listener lost its state")

            case .sendKeepalive:
                if let connection = self.connection, connection.send("SELECT 1") {
                    self.machine.keepaliveSent(at: .now)
                    action = self.waitForInput()
                } else {
                    action = self.machine.connectionLost(reason: self.connection?.errorMessage ?? "no connection")
                }

            case .closeAndRetry(let reason, let delay):
                self.connection?.finish()
                self.connection = nil
                let reason = trimmed(reason)
                self.logger.warning("postgres listener disconnected; retrying in \(delay)", metadata: [
                    "postgres.reason": "\(reason)",
                ])
                self.continuation.yield(.disconnected(reason: reason))
                self.sleep(delay)
                action = self.machine.retryDelayElapsed()
            }
        }
        self.connection?.finish()
        self.connection = nil
        self.continuation.finish()
        self.logger.debug("postgres listener stopped")
    }

    private mutating func listen() -> Action {
        guard let connection = self.connection else {
            return self.machine.connectionLost(reason: "no connection")
        }
        for channel in self.channels {
            let statement = connection.escapeIdentifier(channel).map { "LISTEN \($0)" }
            switch statement.flatMap({ connection.execute($0, parameters: nil) }) {
            case .success:
                continue
            case .failure(let error):
                return self.machine.connectionLost(reason: "LISTEN failed: \(error.message)")
            }
        }
        return self.machine.subscribed(at: .now)
    }

    /// Waits for notifications until the connection fails, a keepalive is due, or the listener stops.
    private mutating func waitForInput() -> Action {
        guard let connection = self.connection else {
            return self.machine.connectionLost(reason: "no connection")
        }
        while !self.control.isStopped {
            // libpq may already hold notifications read while running LISTEN or a keepalive.
            self.deliver(connection.takeNotifications())

            let socket = connection.socket
            guard socket >= 0 else {
                return self.machine.connectionLost(reason: connection.errorMessage)
            }
            let timeout = self.machine.nextDeadline.map { $0 - .now } ?? .seconds(60)
            switch self.poll(socket: socket, timeout: timeout) {
            case .stopped:
                return .wait
            case .timedOut:
                let action = self.machine.deadlineReached(at: .now)
                if action != .wait {
                    return action
                }
            case .readable:
                guard connection.consumeInput() else {
                    return self.machine.connectionLost(reason: connection.errorMessage)
                }
                self.machine.inputReceived(at: .now)
                if self.machine.isAwaitingKeepalive {
                    switch connection.collectSentResults() {
                    case .success(true):
                        self.machine.keepaliveAnswered(at: .now)
                    case .success(false):
                        break
                    case .failure(let error):
                        return self.machine.connectionLost(reason: "keepalive query failed: \(error.message)")
                    }
                }
            }
        }
        return .wait
    }

    private func deliver(_ notifications: [(channel: String, payload: String)]) {
        for notification in notifications {
            self.continuation.yield(.notification(channel: notification.channel, payload: notification.payload))
        }
    }

    private enum PollResult {
        case readable
        case timedOut
        case stopped
    }

    /// `poll()` on the connection's socket (when `socket >= 0`) and the wake pipe.
    private func poll(socket: Int32, timeout: Duration) -> PollResult {
        let wake = self.control.wakeReadFD
        var timeout = max(timeout, .zero)
        if wake < 0 {
            timeout = min(timeout, Self.pollSliceWithoutPipe)
        }
        // Round up so that a deadline is not polled for repeatedly with a zero timeout.
        let milliseconds = Int32(clamping: Int64((timeout.seconds * 1000).rounded(.up)))
        var fds = [
            pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
        ]
        let count = systemPoll(&fds, milliseconds)
        if self.control.isStopped {
            return .stopped
        }
        if count < 0 {
            // EINTR and friends: treat as a spurious wake-up.
            return .timedOut
        }
        if count == 0 {
            return .timedOut
        }
        return fds[0].revents != 0 ? .readable : .timedOut
    }

    /// Sleeps `delay`, waking early when the listener stops.
    private func sleep(_ delay: Duration) {
        let deadline = ContinuousClock.now + delay
        while !self.control.isStopped {
            let remaining = deadline - .now
            guard remaining > .zero else { return }
            _ = self.poll(socket: -1, timeout: remaining)
        }
    }
}

/// `poll(2)`; a free function because `ListenerRunner` has a method of the same name.
private func systemPoll(_ fds: inout [pollfd], _ timeoutMilliseconds: Int32) -> Int32 {
    fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeoutMilliseconds) }
}
