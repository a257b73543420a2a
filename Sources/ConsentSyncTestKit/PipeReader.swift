import Dispatch
import Foundation
import Synchronization

/// Reads a child's pipe to its end on a thread of its own, with blocking reads.
///
/// Not `FileHandle.readabilityHandler`: on Linux, tearing down its dispatch read source races
/// with the source's asynchronous cancellation and can crash the whole test process in
/// libdispatch's `_dispatch_event_loop_drain` (swift-corelibs-foundation pull request 5507;
/// it crashed `make test` here once, on 2026-11-30).
public final class PipeReader: Sendable {
    private struct State {
        var data = Data()
        var ended = false
    }

    private let state = Mutex(State())
    private let done = DispatchSemaphore(value: 0)

    /// Starts reading `handle`; `onChunk` sees each chunk as it arrives.
    public init(_ handle: FileHandle, onChunk: (@Sendable (Data) -> Void)? = nil) {
        Thread.detachNewThread { [self] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                self.state.withLock { $0.data.append(chunk) }
                onChunk?(chunk)
            }
            self.state.withLock { $0.ended = true }
            self.done.signal()
        }
    }

    /// What was read so far.
    public var data: Data { state.withLock { $0.data } }

    /// The pipe reached its end: everything the child wrote is in ``data``.
    public var ended: Bool { state.withLock { $0.ended } }

    /// What was read once the pipe ends, or after `limit`, whichever comes first (blocks).
    public func wait(upTo limit: Duration) -> Data {
        _ = done.wait(timeout: .now() + .milliseconds(Int(limit / .milliseconds(1))))
        return data
    }

    /// Waits without blocking a thread until the pipe ends or `limit` has passed.
    public func ended(within limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while !ended && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return ended
    }
}
