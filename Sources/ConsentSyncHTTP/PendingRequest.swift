import Synchronization

/// One call to ``HTTPClient/send(_:)``: the request and the continuation that
/// receives its outcome exactly once, whichever of completion, cancellation
/// and shutdown comes first (postgres-nio's `ConnectionRequest` pattern).
final class PendingRequest: Sendable {
    let id: UInt64
    let request: HTTPRequest
    /// The client's address policy when the request was sent.
    let addressPolicy: AddressPolicy?
    private let state = Mutex(State.initial)

    private enum State {
        /// Created; the continuation is not installed yet.
        case initial
        /// Cancelled before the continuation was installed.
        case cancelledEarly
        case waiting(CheckedContinuation<HTTPResponse, any Error>)
        case finished
    }

    init(id: UInt64, request: HTTPRequest, addressPolicy: AddressPolicy?) {
        self.id = id
        self.request = request
        self.addressPolicy = addressPolicy
    }

    /// Installs the continuation. Returns false, having already failed it,
    /// when the task was cancelled first.
    func install(_ continuation: CheckedContinuation<HTTPResponse, any Error>) -> Bool {
        let installed = self.state.withLock { state -> Bool in
            switch state {
            case .initial:
                state = .waiting(continuation)
                return true
            case .cancelledEarly, .finished:
                state = .finished
                return false
            case .waiting:
                preconditionFailure("continuation installed twice for request \(self.id)")
            }
        }
        if !installed {
            continuation.resume(throwing: HTTPClientError.cancelledByTask)
        }
        return installed
    }

    /// Delivers the outcome if nothing else did first.
    func complete(_ result: Result<HTTPResponse, HTTPClientError>) {
        let continuation = self.state.withLock { state -> CheckedContinuation<HTTPResponse, any Error>? in
            guard case .waiting(let continuation) = state else { return nil }
            state = .finished
            return continuation
        }
        continuation?.resume(with: result.mapError { $0 })
    }

    /// Fails the request with ``HTTPClientError/Code/cancelled``. Returns
    /// true when it was waiting, so a transfer may exist to be removed.
    func cancel() -> Bool {
        let continuation = self.state.withLock { state -> CheckedContinuation<HTTPResponse, any Error>? in
            switch state {
            case .initial:
                state = .cancelledEarly
                return nil
            case .waiting(let continuation):
                state = .finished
                return continuation
            case .cancelledEarly, .finished:
                return nil
            }
        }
        continuation?.resume(throwing: HTTPClientError.cancelledByTask)
        return continuation != nil
    }

    /// False once the outcome was delivered, so the loop can skip the transfer.
    var isWaiting: Bool {
        self.state.withLock { state in
            if case .waiting = state { return true }
            return false
        }
    }
}

extension HTTPClientError {
    static let cancelledByTask = HTTPClientError(code: .cancelled, message: "the calling task was cancelled")
    static let clientShutDown = HTTPClientError(
        code: .shutdown,
        message: "the HTTP client was shut down before the request completed"
    )
}
