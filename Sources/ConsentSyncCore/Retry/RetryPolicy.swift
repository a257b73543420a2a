/// What happened when a webhook was sent, as far as the retry policy cares.
public enum AttemptOutcome: Sendable, Equatable {
    /// The receiver answered with a status code (and maybe a `Retry-After` header).
    case response(status: Int, retryAfter: String?)
    /// No usable answer: timeout, refused connection, reset, TLS failure, …
    /// `retryable` is false for errors that retrying cannot fix (an invalid URL).
    case transportError(message: String, retryable: Bool)
}

/// The verdict on one attempt.
public enum RetryDecision: Sendable, Equatable {
    case delivered
    case retry(after: Duration)
    case dead(reason: String)
}

/// How a status code is treated, before attempt counts and ages are considered.
public enum StatusClass: Sendable, Equatable {
    case success
    case retryable
    case permanent

    /// 2xx succeed; 408, 425, 429 and 5xx are worth retrying; everything else
    /// (other 4xx, 3xx since redirects are not followed, 1xx) cannot get better by retrying.
    public init(status: Int) {
        switch status {
        case 200...299: self = .success
        case 408, 425, 429, 500...599: self = .retryable
        default: self = .permanent
        }
    }
}

/// Decides, for one attempt, whether a delivery is done, retried later, or dead.
public struct RetryPolicy: Sendable, Equatable {
    public var backoff: Backoff
    /// Give up after this many attempts in all.
    public var maxAttempts: Int
    /// Give up when the next try would be later than this after the delivery was created.
    public var maxAge: Duration
    /// A `Retry-After` longer than this is shortened to it.
    public var maxRetryAfter: Duration

    public init(
        backoff: Backoff = Backoff(),
        maxAttempts: Int = 50,
        maxAge: Duration = .seconds(3 * 24 * 3600),
        maxRetryAfter: Duration = .seconds(3600)
    ) {
        self.backoff = backoff
        self.maxAttempts = maxAttempts
        self.maxAge = maxAge
        self.maxRetryAfter = maxRetryAfter
    }

    /// - Parameters:
    ///   - attempt: the number of the attempt that just ended (1 for the first).
    ///   - age: how long ago the delivery was created.
    public func decide(
        _ outcome: AttemptOutcome,
        attempt: Int,
        age: Duration,
        using generator: inout some RandomNumberGenerator
    ) -> RetryDecision {
        let requested: Duration?
        switch outcome {
        case .response(let status, let retryAfter):
            switch StatusClass(status: status) {
            case .success:
                return .delivered
            case .permanent:
                return .dead(reason: "receiver answered \(status); retrying cannot help")
            case .retryable:
                requested = retryAfter.flatMap { RetryAfter.parse($0) }
            }
        case .transportError(let message, let retryable):
            guard retryable else { return .dead(reason: message) }
            requested = nil
        }

        guard attempt < maxAttempts else {
            return .dead(reason: "gave up after \(attempt) attempts (max_attempts)")
        }
        var wait = backoff.delay(forRetry: attempt, using: &generator)
        if let requested {
            // Honour the receiver's wish, but within bounds: never sooner, never absurdly later.
            wait = max(wait, min(requested, maxRetryAfter))
        }
        guard age + wait <= maxAge else {
            return .dead(reason: "gave up: next attempt would be past max_age of \(Int(maxAge.seconds)) s")
        }
        return .retry(after: wait)
    }

    public func decide(_ outcome: AttemptOutcome, attempt: Int, age: Duration) -> RetryDecision {
        var generator = SystemRandomNumberGenerator()
        return decide(outcome, attempt: attempt, age: age, using: &generator)
    }
}
