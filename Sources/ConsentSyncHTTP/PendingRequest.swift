import Synchronization

/// What receives a request's outcome: called exactly once, on whichever thread completes,
/// cancels or shuts the request down (the client's loop thread, usually).
public typealias HTTPCompletion = @Sendable (Result<HTTPResponse, HTTPClientError>) -> Void

/// One call to ``HTTPClient/send(_:)`` or ``HTTPClient/prepare(_:)``: the request and
/// the handler that receives its outcome exactly once, whichever of completion, cancellation
/// and shutdown comes first (postgres-nio's `ConnectionRequest` pattern).
final class PendingRequest: Sendable {
    let id: UInt64
    let request: HTTPRequest
    /// The client's address policy when the request was sent.
    let addressPolicy: AddressPolicy?
    private let state = Mutex(State.initial)

    private enum State {
        /// Created; the handler is not installed yet.
        case initial
        /// Cancelled before the handler was installed.
        case cancelledEarly
        case waiting(HTTPCompletion)
        case finished
    }

    init(id: UInt64, request: HTTPRequest, addressPolicy: AddressPolicy?) {
        self.id = id
        self.request = request
        self.addressPolicy = addressPolicy
    }

    /// Installs the handler. Returns false, having already called it with
    /// ``HTTPClientError/Code/cancelled``, when the request was cancelled first.
    func install(_ completion: @escaping HTTPCompletion) -> Bool {
        let installed = self.state.withLock { state -> Bool in
            switch state {
            case .initial:
                state = .waiting(completion)
                return true
            case .cancelledEarly, .finished:
                state = .finished
                return false
            case .waiting:
                preconditionFailure("completion installed twice for request \(self.id)")
            }
        }
        if !installed {
            completion(.failure(.cancelledByTask))
        }
        return installed
    }

    /// Delivers the outcome if nothing else did first.
    func complete(_ result: Result<HTTPResponse, HTTPClientError>) {
        let completion = self.state.withLock { state -> HTTPCompletion? in
            guard case .waiting(let completion) = state else { return nil }
            state = .finished
            return completion
        }
        completion?(result)
    }

    /// Fails the request with ``HTTPClientError/Code/cancelled``. Returns
    /// true when it was waiting, so a transfer may exist to be removed.
    func cancel() -> Bool {
        let completion = self.state.withLock { state -> HTTPCompletion? in
            switch state {
            case .initial:
                state = .cancelledEarly
                return nil
            case .waiting(let completion):
                state = .finished
                return completion
            case .cancelledEarly, .finished:
                return nil
            }
        }
        completion?(.failure(.cancelledByTask))
        return completion != nil
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
