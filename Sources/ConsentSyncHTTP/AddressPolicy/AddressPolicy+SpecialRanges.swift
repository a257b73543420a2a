/// One special-purpose block of the IANA IPv4 and IPv6 registries (RFC 6890
/// and successors) and how ``AddressPolicy`` treats it.
struct SpecialRange: Sendable {
    enum Kind: Sendable {
        /// Refused under this rule.
        case rule(AddressPolicy.Rule)
        /// Judged by the IPv4 address at bit `bit` (inverted for Teredo).
        case embedsIPv4(AddressRefusal.Embedding.Kind, bit: Int, inverted: Bool)
    }

    let network: IPNetwork
    let kind: Kind

    private init(_ cidr: String, _ kind: Kind) {
        let parts = cidr.split(separator: "/")
        // Literals below, checked by the unit tests: a typo fails every test at once.
        let address = IPAddress(parts[0])!
        self.network = IPNetwork(uncheckedAddress: address, prefixLength: Int(parts[1])!)
        self.kind = kind
    }

    private init(_ cidr: String, _ rule: AddressPolicy.Rule) {
        self.init(cidr, .rule(rule))
    }

    /// First match wins: narrower blocks come before wider ones.
    static let ipv4: [SpecialRange] = [
        .init("0.0.0.0/32", .unspecified),
        .init("0.0.0.0/8", .thisNetwork),
        .init("10.0.0.0/8", .privateUse),
        .init("100.64.0.0/10", .sharedAddressSpace),
        .init("127.0.0.0/8", .loopback),
        .init("169.254.0.0/16", .linkLocal),  // includes 169.254.169.254, the cloud metadata service
        .init("172.16.0.0/12", .privateUse),
        .init("192.0.0.0/24", .reserved),  // IETF protocol assignments
        .init("192.0.2.0/24", .documentation),
        .init("192.88.99.0/24", .reserved),  // former 6to4 relay anycast
        .init("192.168.0.0/16", .privateUse),
        .init("198.18.0.0/15", .benchmarking),
        .init("198.51.100.0/24", .documentation),
        .init("203.0.113.0/24", .documentation),
        .init("224.0.0.0/4", .multicast),
        .init("255.255.255.255/32", .broadcast),
        .init("240.0.0.0/4", .reserved),
    ]

    /// First match wins: narrower blocks come before wider ones.
    static let ipv6: [SpecialRange] = [
        .init("::/128", .unspecified),
        .init("::1/128", .loopback),
        .init("::ffff:0:0/96", .embedsIPv4(.ipv4Mapped, bit: 96, inverted: false)),
        .init("::/96", .embedsIPv4(.ipv4Compatible, bit: 96, inverted: false)),
        .init("64:ff9b::/96", .embedsIPv4(.nat64, bit: 96, inverted: false)),
        .init("64:ff9b:1::/48", .privateUse),  // local-use NAT64 (RFC 8215)
        .init("100::/64", .reserved),  // discard-only
        .init("2001::/32", .embedsIPv4(.teredo, bit: 96, inverted: true)),
        .init("2001:2::/48", .benchmarking),
        .init("2001:db8::/32", .documentation),
        .init("2002::/16", .embedsIPv4(.sixToFour, bit: 16, inverted: false)),
        .init("3fff::/20", .documentation),
        .init("fc00::/7", .privateUse),  // unique local
        .init("fe80::/10", .linkLocal),
        .init("fec0::/10", .privateUse),  // deprecated site-local
        .init("ff00::/8", .multicast),
        // Outside 2000::/3 nothing is global unicast.
        .init("::/3", .reserved),
        .init("4000::/2", .reserved),
        .init("8000::/1", .reserved),
    ]
}
