import Foundation
import Logging

/// `LISTEN` on a dedicated connection, yielding notifications; reconnects by itself.
///
/// Notifications are wake-up hints: the event buffer is bounded and keeps the newest events, so a
/// consumer that falls far behind loses old notifications and must (as always after
/// `.listening(reconnected: true)`) read the current state instead of relying on every payload.
public struct PostgresListener: Sendable {
    public enum Event: Sendable, Equatable {
        /// `LISTEN` is active. `reconnected` is true after a lost connection: catch up on anything missed.
        case listening(reconnected: Bool)
        case notification(channel: String, payload: String)
        /// The connection was lost or could not be made; the listener retries with backoff.
        case disconnected(reason: String)
    }

    /// When the listener checks a quiet connection: after `interval` without traffic it sends a
    /// cheap query, and declares the connection dead when no reply came within `timeout`.
    public struct Keepalive: Sendable, Equatable {
        public var interval: Duration
        public var timeout: Duration

        public init(interval: Duration = .seconds(30), timeout: Duration = .seconds(10)) {
            self.interval = interval
            self.timeout = timeout
        }
    }

    /// How many events wait for a slow consumer before the oldest are dropped.
    public static let bufferSize = 1024

    public let configuration: PostgresConfiguration
    public let channels: [String]
    public let backoff: Backoff
    public let keepalive: Keepalive
    public let logger: Logger

    public init(
        configuration: PostgresConfiguration,
        channels: [String],
        backoff: Backoff = .init(),
        keepalive: Keepalive = .init(),
        logger: Logger
    ) {
        self.configuration = configuration
        self.channels = channels
        self.backoff = backoff
        self.keepalive = keepalive
        self.logger = logger
    }

    /// The events of one listening session. Iterating starts a thread and a connection; they stop
    /// when the iterating task is cancelled or the iterator is dropped. The sequence ends at once then;
    /// the thread ends as soon as a connection attempt in progress returns (see `connect_timeout`).
    /// Each call gives an independent session with its own connection.
    public func events() -> Events {
        Events(listener: self)
    }

    public struct Events: AsyncSequence, Sendable {
        public typealias Element = Event
        public typealias Failure = Never

        let listener: PostgresListener

        public func makeAsyncIterator() -> AsyncIterator {
            let control = ListenerControl()
            let (stream, continuation) = AsyncStream.makeStream(
                of: Event.self,
                bufferingPolicy: .bufferingNewest(PostgresListener.bufferSize)
            )
            continuation.onTermination = { _ in control.stop() }
            let runner = ListenerRunner(listener: self.listener, control: control, continuation: continuation)
            let thread = Thread {
                var runner = runner
                runner.run()
            }
            thread.name = "consent-sync.postgres.listener"
            thread.start()
            return AsyncIterator(base: stream.makeAsyncIterator(), stopper: StopOnRelease(control))
        }

        public struct AsyncIterator: AsyncIteratorProtocol {
            public typealias Element = Event
            public typealias Failure = Never

            private var base: AsyncStream<Event>.Iterator
            /// Stops the listener when the last copy of the iterator is gone.
            private let stopper: StopOnRelease

            init(base: AsyncStream<Event>.Iterator, stopper: StopOnRelease) {
                self.base = base
                self.stopper = stopper
            }

            public mutating func next() async -> Event? {
                await self.base.next()
            }

            public mutating func next(isolation actor: isolated (any Actor)?) async -> Event? {
                await self.base.next(isolation: actor)
            }
        }
    }
}

final class StopOnRelease: Sendable {
    private let control: ListenerControl

    init(_ control: ListenerControl) {
        self.control = control
    }

    deinit {
        self.control.stop()
    }
}
