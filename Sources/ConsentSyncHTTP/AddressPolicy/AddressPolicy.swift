/// Decides, for the concrete address a connection is about to be opened to,
/// whether a webhook may go there: the guard against server-side request
/// forgery (SSRF).
///
/// Every address that is not public unicast is refused (loopback, private,
/// link-local and cloud metadata, carrier-grade NAT, multicast, unspecified,
/// broadcast, "this network", reserved, documentation and benchmarking
/// blocks), and IPv6 forms that embed an IPv4 address (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4, Teredo) are judged by the embedded address.
/// ``allowedNetworks`` lets chosen blocks through anyway.
///
/// A pure value: ``HTTPClient`` applies it when a socket is opened and again
/// before every request on a reused connection, so a host name that resolves
/// (or re-resolves) to a refused address gets nowhere.
///
/// ```swift
/// let policy = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128", "10.20.0.0/16"])
/// policy.verdict(for: IPAddress("10.20.3.4")!).isAllowed      // true
/// try policy.check(IPAddress("169.254.169.254")!)              // throws AddressRefusal:
/// // 169.254.169.254 is link-local (169.254.0.0/16); allow it with http.allow_networks
/// ```
public struct AddressPolicy: Sendable, Hashable {
    /// Blocks let through even though they are not public.
    public var allowedNetworks: [IPNetwork]
    /// The setting that fills ``allowedNetworks``, named in refusals so the
    /// operator knows what to change.
    public var allowlistSetting: String

    /// Refuses every address that is not public unicast.
    public static let strict = AddressPolicy()

    /// A policy letting `allowedNetworks` through.
    public init(allowedNetworks: [IPNetwork] = [], allowlistSetting: String = "http.allow_networks") {
        self.allowedNetworks = allowedNetworks
        self.allowlistSetting = allowlistSetting
    }

    /// A policy letting the CIDR blocks `entries` through, such as
    /// `["127.0.0.0/8", "::1/128", "10.20.0.0/16"]`.
    ///
    /// Throws for the first entry that is not a network, naming it and its
    /// position; parse entries one by one with ``IPNetwork/init(_:)`` to
    /// report every bad one.
    public init(allowing entries: [String], allowlistSetting: String = "http.allow_networks") throws(AddressPolicyError) {
        var networks: [IPNetwork] = []
        for (index, entry) in entries.enumerated() {
            do {
                networks.append(try IPNetwork(entry))
            } catch {
                var error = error
                error.index = index
                throw error
            }
        }
        self.init(allowedNetworks: networks, allowlistSetting: allowlistSetting)
    }

    /// What the policy says about `address`.
    public func verdict(for address: IPAddress) -> Verdict {
        guard var refusal = Self.classify(address) else { return .publicAddress }
        refusal.allowlistSetting = self.allowlistSetting
        // An IPv4-mapped address is the IPv4 address itself, reached through an
        // IPv6 socket, so allowlisting 127.0.0.0/8 also admits ::ffff:127.0.0.1.
        // NAT64, 6to4 and Teredo forms reach the embedded address as a gateway
        // or relay sees it (its own loopback, its own network): they are
        // admitted only by an IPv6 entry of their own.
        var candidates = [address]
        if let embedding = refusal.embedding, embedding.kind == .ipv4Mapped {
            candidates.append(embedding.ipv4)
        }
        for network in self.allowedNetworks where candidates.contains(where: network.contains) {
            return .allowlisted(by: network, refusal)
        }
        return .refused(refusal)
    }

    /// Throws the refusal when `address` may not be connected to.
    public func check(_ address: IPAddress) throws(AddressRefusal) {
        if case .refused(let refusal) = self.verdict(for: address) {
            throw refusal
        }
    }

    /// The reason `address` is not public unicast, or nil when it is;
    /// ignores ``allowedNetworks``.
    public static func classify(_ address: IPAddress) -> AddressRefusal? {
        let table = address.isIPv4 ? SpecialRange.ipv4 : SpecialRange.ipv6
        guard let range = table.first(where: { $0.network.contains(address) }) else { return nil }
        switch range.kind {
        case .rule(let rule):
            return AddressRefusal(address: address, rule: rule, range: range.network)
        case .embedsIPv4(let kind, let bit, let inverted):
            var ipv4 = address.embeddedIPv4(atBit: bit)
            if inverted {
                ipv4 = IPAddress(value: ~ipv4.value, isIPv4: true)
            }
            let embedding = AddressRefusal.Embedding(kind: kind, ipv4: ipv4)
            if let inner = Self.classify(ipv4) {
                return AddressRefusal(address: address, rule: inner.rule, range: inner.range, embedding: embedding)
            }
            if kind == .ipv4Compatible {
                // Deprecated since RFC 4291 and never routed: refused whatever it embeds.
                return AddressRefusal(address: address, rule: .reserved, range: range.network)
            }
            return nil
        }
    }
}

extension AddressPolicy {
    /// The outcome of ``AddressPolicy/verdict(for:)``.
    public enum Verdict: Sendable, Hashable {
        /// A public unicast address.
        case publicAddress
        /// Not public, but inside an allowed network.
        case allowlisted(by: IPNetwork, AddressRefusal)
        /// Not public and not allowed.
        case refused(AddressRefusal)

        public var isAllowed: Bool {
            if case .refused = self { return false }
            return true
        }
    }

    /// Why an address is not public unicast; `rawValue` is a stable
    /// lowercase token for logs and metrics.
    public enum Rule: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        case unspecified
        case thisNetwork = "this-network"
        case loopback
        case privateUse = "private"
        case linkLocal = "link-local"
        case sharedAddressSpace = "cgnat"
        case multicast
        case broadcast
        case reserved
        case documentation
        case benchmarking

        /// Completes "A is …": "link-local", "carrier-grade NAT space".
        public var description: String {
            switch self {
            case .unspecified: "unspecified"
            case .thisNetwork: "in \"this network\""
            case .loopback: "loopback"
            case .privateUse: "private"
            case .linkLocal: "link-local"
            case .sharedAddressSpace: "carrier-grade NAT space"
            case .multicast: "multicast"
            case .broadcast: "broadcast"
            case .reserved: "reserved"
            case .documentation: "reserved for documentation"
            case .benchmarking: "reserved for benchmarking"
            }
        }
    }
}

/// An address ``AddressPolicy`` refuses, with the rule that refused it.
///
/// The description names the address, the rule, the special-purpose block and
/// the setting that would allow it, for example
/// "169.254.169.254 is link-local (169.254.0.0/16); allow it with http.allow_networks".
public struct AddressRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    /// An IPv4 address carried inside an IPv6 one, which decided the verdict.
    public struct Embedding: Sendable, Hashable {
        /// The IPv6 form carrying the IPv4 address.
        public enum Kind: String, Sendable, Hashable, CustomStringConvertible {
            case ipv4Mapped = "IPv4-mapped"
            case ipv4Compatible = "IPv4-compatible"
            case nat64 = "NAT64"
            case sixToFour = "6to4"
            case teredo = "Teredo"

            public var description: String { self.rawValue }

            /// "an IPv4-mapped", "a NAT64".
            var withArticle: String {
                switch self {
                case .ipv4Mapped, .ipv4Compatible: "an \(self.rawValue)"
                case .nat64, .sixToFour, .teredo: "a \(self.rawValue)"
                }
            }
        }

        public var kind: Kind
        public var ipv4: IPAddress
    }

    /// The address connected to (or about to be).
    public var address: IPAddress
    public var rule: AddressPolicy.Rule
    /// The special-purpose block that matched (of ``embedding``'s address when there is one).
    public var range: IPNetwork
    public var embedding: Embedding?
    /// The setting named in the description.
    public var allowlistSetting: String

    public init(
        address: IPAddress,
        rule: AddressPolicy.Rule,
        range: IPNetwork,
        embedding: Embedding? = nil,
        allowlistSetting: String = "http.allow_networks"
    ) {
        self.address = address
        self.rule = rule
        self.range = range
        self.embedding = embedding
        self.allowlistSetting = allowlistSetting
    }

    public var description: String {
        let what =
            if let embedding {
                "\(self.address) is \(embedding.kind.withArticle) address of \(embedding.ipv4), which is \(self.rule) (\(self.range))"
            } else {
                "\(self.address) is \(self.rule) (\(self.range))"
            }
        return "\(what); allow it with \(self.allowlistSetting)"
    }
}
