import Foundation

/// A downstream system that receives consent changes as webhooks.
public struct Subscriber: Sendable, Equatable {
    /// Per-subscriber limits, so that one slow receiver never holds up another.
    public struct Limits: Sendable, Equatable {
        /// Requests in flight at once from one daemon.
        public var maxInFlight: Int
        /// Total time allowed for one request.
        public var timeout: Duration

        /// Requests per second over all daemons (approximately); `nil` for no limit.
        public var ratePerSecond: Double?
        /// Overrides of the daemon's `retry.max_attempts` and `retry.max_age_seconds`.
        public var maxAttempts: Int?
        public var maxAge: Duration?

        public init(maxInFlight: Int = 16, timeout: Duration = .seconds(10), ratePerSecond: Double? = nil, maxAttempts: Int? = nil, maxAge: Duration? = nil) {
            self.maxInFlight = maxInFlight
            self.timeout = timeout
            self.ratePerSecond = ratePerSecond
            self.maxAttempts = maxAttempts
            self.maxAge = maxAge
        }

        /// The daemon's policy with this subscriber's overrides.
        public func retryPolicy(from base: RetryPolicy) -> RetryPolicy {
            var policy = base
            if let maxAttempts { policy.maxAttempts = maxAttempts }
            if let maxAge { policy.maxAge = maxAge }
            return policy
        }
    }

    /// PEM files for TLS to this subscriber: its CA bundle, and a client certificate and key
    /// for mutual TLS. `nil` fields use the system's trust store and no client certificate.
    public struct TLSFiles: Sendable, Equatable {
        public var caBundlePath: String?
        public var clientCertificatePath: String?
        public var clientKeyPath: String?

        public init(caBundlePath: String? = nil, clientCertificatePath: String? = nil, clientKeyPath: String? = nil) {
            self.caBundlePath = caBundlePath
            self.clientCertificatePath = clientCertificatePath
            self.clientKeyPath = clientKeyPath
        }

        public var isEmpty: Bool { caBundlePath == nil && clientCertificatePath == nil && clientKeyPath == nil }
    }

    public var id: Int64
    public var name: String
    public var url: String
    /// The active signing secrets, oldest first: during a rotation's overlap the earlier ones
    /// with their expiry in ``secretExpiries``.
    public var secrets: [SigningSecret]
    /// When each secret that is being rotated out expires; the newest secret has none.
    public var secretExpiries: [SigningSecret: Date] = [:]
    /// Only changes of these purposes; `nil` for all.
    public var purposes: [String]?
    /// Only these event types (`consent.withdrawn`, …); `nil` for all.
    public var eventTypes: [String]?
    /// Whether the relay sends to it now; paused and disabled subscribers only collect deliveries.
    public var state: SubscriberState
    /// Why it is paused or disabled, as given by whoever did it; `nil` when enabled.
    public var stateReason: String?
    public var limits: Limits
    public var tls: TLSFiles = TLSFiles()
    /// Only these captured attributes are sent to it; `nil` for every captured one.
    public var fields: [String]?
    /// Set: it receives a pseudonymous subject id (``PseudonymKey/pseudonym(for:)``), never the raw one.
    public var pseudonymKey: PseudonymKey?
    /// When several changes of one subject and purpose wait for it, send only the newest;
    /// the older ones are recorded as superseded.
    public var newestWins = false

    /// The secrets to sign with at `date`: those not yet expired. A relay that has not re-read
    /// its subscribers since an overlap ended still stops signing with the old secret on time.
    /// Never empty while ``secrets`` is not (the newest secret does not expire).
    public func signingSecrets(at date: Date) -> [SigningSecret] {
        guard !secretExpiries.isEmpty else { return secrets }
        let active = secrets.filter { secret in secretExpiries[secret].map { $0 > date } ?? true }
        return active.isEmpty ? secrets : active
    }

    /// True when its bodies differ from the shared one (fewer attributes, another subject id).
    public var needsOwnBody: Bool { fields != nil || pseudonymKey != nil }

    /// True when the relay may send to this subscriber (`state == .enabled`). Setting it to
    /// false disables an enabled subscriber; setting it to true enables it.
    public var enabled: Bool {
        get { state == .enabled }
        set {
            guard newValue != enabled else { return }
            state = newValue ? .enabled : .disabled
        }
    }

    public init(
        id: Int64,
        name: String,
        url: String,
        secrets: [SigningSecret],
        purposes: [String]? = nil,
        eventTypes: [String]? = nil,
        enabled: Bool = true,
        limits: Limits = Limits()
    ) {
        self.init(
            id: id, name: name, url: url, secrets: secrets, purposes: purposes, eventTypes: eventTypes,
            state: enabled ? .enabled : .disabled, stateReason: nil, limits: limits
        )
    }

    public init(
        id: Int64,
        name: String,
        url: String,
        secrets: [SigningSecret],
        purposes: [String]? = nil,
        eventTypes: [String]? = nil,
        state: SubscriberState,
        stateReason: String? = nil,
        limits: Limits = Limits()
    ) {
        self.id = id
        self.name = name
        self.url = url
        self.secrets = secrets
        self.purposes = purposes
        self.eventTypes = eventTypes
        self.state = state
        self.stateReason = stateReason
        self.limits = limits
    }
}

/// Whether a subscriber receives requests.
///
/// Paused and disabled subscribers get none, but fan-out keeps creating their deliveries, so
/// nothing is dropped while they are off; when they are on again everything is sent, in order.
public enum SubscriberState: String, Sendable, Codable, CaseIterable {
    /// Receives requests.
    case enabled
    /// Stopped by an operator for a while (`subscriber pause`); `subscriber resume` ends it.
    case paused
    /// Stopped by an operator, or by consent-sync when the receiver answered `410 Gone` or kept
    /// failing; only `subscriber enable` ends it.
    case disabled

    /// An operator's or consent-sync's request to change the state.
    public enum Action: String, Sendable, Codable, CaseIterable {
        case pause
        case resume
        case enable
        case disable
    }

    /// What an action does to a subscriber in this state.
    public enum Transition: Sendable, Equatable {
        /// The state becomes `to`.
        case change(to: SubscriberState)
        /// Already there: nothing to do, nothing to record.
        case unchanged
        /// Not allowed from this state; `reason` says what to do instead.
        case refused(reason: String)
    }

    /// The rules: `pause` only stops an enabled subscriber and `resume` only restarts a paused
    /// one, so that a subscriber disabled for a reason (such as `410 Gone`) is never started
    /// again by a `resume` meant for a pause; `enable` and `disable` work from any state.
    public func applying(_ action: Action) -> Transition {
        switch (self, action) {
        case (.enabled, .pause): .change(to: .paused)
        case (.paused, .pause): .unchanged
        case (.disabled, .pause): .refused(reason: "it is disabled, which already stops its requests; 'enable' it when it may receive again")
        case (.paused, .resume): .change(to: .enabled)
        case (.enabled, .resume): .unchanged
        case (.disabled, .resume): .refused(reason: "it is disabled, not paused; check why, then use 'enable'")
        case (.enabled, .enable): .unchanged
        case (.paused, .enable), (.disabled, .enable): .change(to: .enabled)
        case (.disabled, .disable): .unchanged
        case (.enabled, .disable), (.paused, .disable): .change(to: .disabled)
        }
    }
}

/// Checks of what a user types when registering a subscriber.
public enum SubscriberValidation {
    public static let eventTypes = ["consent.granted", "consent.denied", "consent.withdrawn", "consent.deleted"]

    /// Lower-case letters, digits, `.`, `_`, `-`; 1 to 63 characters, starting with a letter or digit.
    public static func validateName(_ name: String) throws(SubscriberValidationError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789._-")
        guard let first = name.first, first.isLetter || first.isNumber,
              name.count <= 63, name.allSatisfy({ allowed.contains($0) })
        else {
            throw SubscriberValidationError(field: "name", reason: "'\(name.prefix(80))' is not a valid name: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
    }

    /// An absolute `http`/`https` URL with a host, without credentials, at most 2048 bytes.
    public static func validateURL(_ text: String) throws(SubscriberValidationError) {
        func fail(_ reason: String) -> SubscriberValidationError {
            SubscriberValidationError(field: "url", reason: reason)
        }
        guard text.utf8.count <= 2048 else { throw fail("is longer than 2048 bytes") }
        guard !text.contains(where: { $0.isWhitespace || $0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false }) else {
            throw fail("contains white space or control characters")
        }
        // ASCII only: an internationalised host must be given in its punycode form (xn--…)
        // and other characters percent-encoded, so that what an operator reads is what is
        // connected to (no look-alike letters, no right-to-left overrides).
        guard text.unicodeScalars.allSatisfy(\.isASCII) else {
            throw fail("contains non-ASCII characters; write the host in punycode (xn--…) and percent-encode the rest")
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw fail("'\(text.prefix(200))' is not an absolute URL")
        }
        guard scheme == "https" || scheme == "http" else {
            throw fail("scheme '\(scheme)' is not allowed; use https (or http)")
        }
        guard let host = components.host, !host.isEmpty else { throw fail("has no host") }
        if let port = components.port, !(1...65535).contains(port) {
            throw fail("port \(port) is out of range; use 1...65535")
        }
        guard components.user == nil, components.password == nil else {
            throw fail("must not carry credentials; receivers authenticate consent-sync by its signature")
        }
        guard components.fragment == nil else { throw fail("must not have a #fragment") }
    }

    public static func validateEventTypes(_ types: [String]) throws(SubscriberValidationError) {
        for type in types where !eventTypes.contains(type) {
            throw SubscriberValidationError(field: "event-type", reason: "'\(type.prefix(80))' is not an event type; use one of \(eventTypes.joined(separator: ", "))")
        }
    }

    public static func validatePurposes(_ purposes: [String]) throws(SubscriberValidationError) {
        for purpose in purposes where purpose.isEmpty || purpose.count > 200 {
            throw SubscriberValidationError(field: "purpose", reason: "a purpose must be 1 to 200 characters")
        }
    }
}

public struct SubscriberValidationError: Error, CustomStringConvertible, Sendable, Equatable {
    public var field: String
    public var reason: String
    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { "invalid subscriber \(field): \(reason)" }
}
