import Testing

@testable import ConsentSyncHTTP

@Suite("AddressPolicy: which addresses a webhook may connect to")
struct AddressPolicyTests {
    /// An address, the rule that refuses it under the strict policy (nil: public), and the embedded IPv4 address that decided.
    struct Case: Sendable, CustomTestStringConvertible {
        var address: String
        var rule: AddressPolicy.Rule?
        var embedded: String? = nil
        var testDescription: String { "\(self.address) → \(self.rule.map { "\($0)" } ?? "public")" }
    }

    static let ipv4Cases: [Case] = [
        .init(address: "0.0.0.0", rule: .unspecified),
        .init(address: "0.1.2.3", rule: .thisNetwork),
        .init(address: "10.0.0.1", rule: .privateUse),
        .init(address: "10.255.255.255", rule: .privateUse),
        .init(address: "100.64.0.1", rule: .sharedAddressSpace),
        .init(address: "100.127.255.255", rule: .sharedAddressSpace),
        .init(address: "100.128.0.1", rule: nil),
        .init(address: "100.63.255.255", rule: nil),
        .init(address: "127.0.0.1", rule: .loopback),
        .init(address: "127.8.9.10", rule: .loopback),
        .init(address: "169.254.169.254", rule: .linkLocal),
        .init(address: "169.254.0.1", rule: .linkLocal),
        .init(address: "172.15.255.255", rule: nil),
        .init(address: "172.16.0.1", rule: .privateUse),
        .init(address: "172.31.255.255", rule: .privateUse),
        .init(address: "172.32.0.1", rule: nil),
        .init(address: "192.0.0.8", rule: .reserved),
        .init(address: "192.0.2.1", rule: .documentation),
        .init(address: "192.88.99.1", rule: .reserved),
        .init(address: "192.168.1.1", rule: .privateUse),
        .init(address: "192.169.0.1", rule: nil),
        .init(address: "198.18.0.1", rule: .benchmarking),
        .init(address: "198.19.255.255", rule: .benchmarking),
        .init(address: "198.20.0.1", rule: nil),
        .init(address: "198.51.100.7", rule: .documentation),
        .init(address: "203.0.113.9", rule: .documentation),
        .init(address: "224.0.0.1", rule: .multicast),
        .init(address: "239.255.255.250", rule: .multicast),
        .init(address: "240.0.0.1", rule: .reserved),
        .init(address: "255.255.255.254", rule: .reserved),
        .init(address: "255.255.255.255", rule: .broadcast),
        .init(address: "8.8.8.8", rule: nil),
        .init(address: "93.184.216.34", rule: nil),
        .init(address: "1.1.1.1", rule: nil),
        .init(address: "223.255.255.255", rule: nil),
    ]

    static let ipv6Cases: [Case] = [
        .init(address: "::", rule: .unspecified),
        .init(address: "::1", rule: .loopback),
        .init(address: "::ffff:127.0.0.1", rule: .loopback, embedded: "127.0.0.1"),
        .init(address: "::ffff:10.0.0.1", rule: .privateUse, embedded: "10.0.0.1"),
        .init(address: "::ffff:169.254.169.254", rule: .linkLocal, embedded: "169.254.169.254"),
        .init(address: "::ffff:0.0.0.0", rule: .unspecified, embedded: "0.0.0.0"),
        .init(address: "::ffff:8.8.8.8", rule: nil),
        .init(address: "::127.0.0.1", rule: .loopback, embedded: "127.0.0.1"),
        .init(address: "::8.8.8.8", rule: .reserved),  // IPv4-compatible: deprecated, refused whatever it embeds
        .init(address: "64:ff9b::a00:1", rule: .privateUse, embedded: "10.0.0.1"),
        .init(address: "64:ff9b::7f00:1", rule: .loopback, embedded: "127.0.0.1"),
        .init(address: "64:ff9b::a9fe:a9fe", rule: .linkLocal, embedded: "169.254.169.254"),
        .init(address: "64:ff9b::808:808", rule: nil),
        .init(address: "64:ff9b:1::1", rule: .privateUse),
        .init(address: "2002:7f00:1::", rule: .loopback, embedded: "127.0.0.1"),
        .init(address: "2002:a9fe:a9fe::1", rule: .linkLocal, embedded: "169.254.169.254"),
        .init(address: "2002:c0a8:101::1", rule: .privateUse, embedded: "192.168.1.1"),
        .init(address: "2002:808:808::1", rule: nil),
        // Teredo: the client's IPv4 address is stored inverted in the last 32 bits.
        .init(address: "2001:0:4136:e378:8000:63bf:80ff:fffe", rule: .loopback, embedded: "127.0.0.1"),
        .init(address: "2001:0:4136:e378:8000:63bf:f7f7:f7f7", rule: nil),
        .init(address: "2001:db8::1", rule: .documentation),
        .init(address: "2001:2::1", rule: .benchmarking),
        .init(address: "3fff::1", rule: .documentation),
        .init(address: "100::1", rule: .reserved),
        .init(address: "fc00::1", rule: .privateUse),
        .init(address: "fd00:ec2::254", rule: .privateUse),
        .init(address: "fe80::1", rule: .linkLocal),
        .init(address: "febf::1", rule: .linkLocal),
        .init(address: "fec0::1", rule: .privateUse),
        .init(address: "ff02::1", rule: .multicast),
        .init(address: "ff0e::1", rule: .multicast),
        .init(address: "4000::1", rule: .reserved),
        .init(address: "1::1", rule: .reserved),
        .init(address: "e000::1", rule: .reserved),
        .init(address: "2606:4700::1111", rule: nil),
        .init(address: "2a00:1450:4001::1", rule: nil),
    ]

    /// A literal known to parse; a typo here stops the test run at once.
    static func address(_ text: String) -> IPAddress {
        guard let address = IPAddress(text) else { preconditionFailure("'\(text)' is not an address") }
        return address
    }

    @Test("the strict policy classifies IPv4 addresses", arguments: ipv4Cases)
    func ipv4(_ testCase: Case) throws {
        try self.expectStrictVerdict(testCase)
    }

    @Test("the strict policy classifies IPv6 addresses, judging embedded IPv4 by its own rules", arguments: ipv6Cases)
    func ipv6(_ testCase: Case) throws {
        try self.expectStrictVerdict(testCase)
    }

    private func expectStrictVerdict(_ testCase: Case) throws {
        let address = try #require(IPAddress(testCase.address))
        let verdict = AddressPolicy.strict.verdict(for: address)
        guard let rule = testCase.rule else {
            #expect(verdict == .publicAddress)
            #expect(AddressPolicy.classify(address) == nil)
            #expect(throws: Never.self) { try AddressPolicy.strict.check(address) }
            return
        }
        guard case .refused(let refusal) = verdict else {
            Issue.record("\(testCase.address) should be refused as \(rule), got \(verdict)")
            return
        }
        #expect(!verdict.isAllowed)
        #expect(refusal.address == address)
        #expect(refusal.rule == rule)
        #expect(refusal.embedding?.ipv4 == testCase.embedded.flatMap { IPAddress($0) })
        #expect(refusal.range.contains(refusal.embedding?.ipv4 ?? address))
        #expect(refusal.description.hasPrefix("\(address) is "))
        #expect(refusal.description.contains(rule.description))
        #expect(refusal.description.hasSuffix("; allow it with http.allow_networks"))
        #expect(throws: refusal) { try AddressPolicy.strict.check(address) }
    }

    @Test("refusals name the address, the rule, the block and the setting")
    func refusalMessages() throws {
        let metadata = try #require(IPAddress("169.254.169.254"))
        let refusal = try #require(AddressPolicy.classify(metadata))
        #expect(refusal.description == "169.254.169.254 is link-local (169.254.0.0/16); allow it with http.allow_networks")

        let mapped = try #require(AddressPolicy.classify(Self.address("::ffff:127.0.0.1")))
        #expect(
            mapped.description
                == "::ffff:127.0.0.1 is an IPv4-mapped address of 127.0.0.1, which is loopback (127.0.0.0/8); allow it with http.allow_networks"
        )
        let nat64 = try #require(AddressPolicy.classify(Self.address("64:ff9b::a00:1")))
        #expect(nat64.description.hasPrefix("64:ff9b::a00:1 is a NAT64 address of 10.0.0.1, which is private (10.0.0.0/8)"))

        let custom = AddressPolicy(allowlistSetting: "CONSENT_SYNC_HTTP_ALLOW_NETWORKS")
        guard case .refused(let named) = custom.verdict(for: Self.address("100.64.1.2")) else {
            Issue.record("100.64.1.2 should be refused")
            return
        }
        #expect(named.description == "100.64.1.2 is carrier-grade NAT space (100.64.0.0/10); allow it with CONSENT_SYNC_HTTP_ALLOW_NETWORKS")
        #expect(AddressPolicy.Rule.sharedAddressSpace.rawValue == "cgnat")
    }

    @Test("an allowlist lets exactly its networks through, embedded IPv4 forms included")
    func allowlist() throws {
        let policy = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128", "10.20.0.0/16"])
        #expect(policy.allowedNetworks.map(\.description) == ["127.0.0.0/8", "::1/128", "10.20.0.0/16"])
        let expectations: [(String, String?)] = [
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.255.0.9", "127.0.0.0/8"),
            ("::1", "::1/128"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("10.20.3.4", "10.20.0.0/16"),
            ("::ffff:10.20.3.4", "10.20.0.0/16"),
        ]
        for (text, network) in expectations {
            let address = try #require(IPAddress(text))
            let verdict = policy.verdict(for: address)
            guard case .allowlisted(let by, let refusal) = verdict else {
                Issue.record("\(text) should be allowlisted, got \(verdict)")
                continue
            }
            #expect(by.description == network)
            #expect(refusal.address == address)
            #expect(verdict.isAllowed)
        }
        for text in ["10.21.0.1", "10.0.0.1", "169.254.169.254", "192.168.0.1", "fe80::1", "::2", "64:ff9b::7f00:1"] {
            let address = try #require(IPAddress(text))
            #expect(!policy.verdict(for: address).isAllowed, "\(text) is not in the allowlist")
        }
        #expect(policy.verdict(for: Self.address("8.8.8.8")) == .publicAddress)
        // NAT64, 6to4 and Teredo forms reach the embedded address from a gateway
        // or relay, not from here: only an IPv6 entry of their own admits them.
        for text in ["64:ff9b::a14:304", "2002:a14:304::1", "::10.20.3.4"] {
            #expect(!policy.verdict(for: Self.address(text)).isAllowed, "\(text)")
        }
        let nat64 = try AddressPolicy(allowing: ["64:ff9b::a14:0/112"])
        #expect(nat64.verdict(for: Self.address("64:ff9b::a14:304")).isAllowed)
        #expect(!nat64.verdict(for: Self.address("10.20.3.4")).isAllowed)
    }

    @Test("valid network entries", arguments: [
        ("127.0.0.0/8", "127.0.0.0/8"), ("::1/128", "::1/128"), ("10.20.0.0/16", "10.20.0.0/16"),
        ("0.0.0.0/0", "0.0.0.0/0"), ("::/0", "::/0"), (" 10.0.0.0/8 ", "10.0.0.0/8"), ("192.168.1.7", "192.168.1.7/32"),
        ("fd00::/8", "fd00::/8"), ("FD00:0:0::/16", "fd00::/16"), ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
    ])
    func validNetworks(entry: String, canonical: String) throws {
        #expect(try IPNetwork(entry).description == canonical)
    }

    @Test("bad network entries are refused, naming the entry and what is wrong", arguments: [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("10.0.0.0/33", "the prefix length '33' is not a whole number in 0...32"),
        ("::1/129", "the prefix length '129' is not a whole number in 0...128"),
        ("10.0.0.0/-1", "the prefix length '-1'"),
        ("10.0.0.0/", "the prefix length ''"),
        ("10.0.0.0/8/8", "the prefix length '8/8'"),
        ("10.0.0.0/ 8", "the prefix length ' 8'"),
        ("10.0.0.0/0x8", "the prefix length '0x8'"),
        ("10.20.1.0/16", "host bits are set after the /16 prefix; did you mean 10.20.0.0/16?"),
        ("fd00::1/8", "did you mean fd00::/8?"),
        ("localhost", "'localhost' is not an IPv4 or IPv6 address"),
        ("10.0.0/24", "'10.0.0' is not an IPv4 or IPv6 address"),
        ("010.0.0.0/8", "'010.0.0.0' is not an IPv4 or IPv6 address"),
        ("10.0.0.256/32", "'10.0.0.256' is not an IPv4 or IPv6 address"),
        ("[::1]/128", "without brackets"),
        ("fe80::1%eth0/128", "zone index"),
    ])
    func badNetworks(entry: String, reason: String) {
        #expect {
            _ = try IPNetwork(entry)
        } throws: { error in
            guard let error = error as? AddressPolicyError else { return false }
            return error.entry == entry && error.reason.contains(reason)
                && error.description.hasPrefix("'\(entry)' is not a valid network: ")
        }
    }

    @Test("AddressPolicy(allowing:) names the bad entry and its position")
    func badEntryInList() {
        #expect {
            _ = try AddressPolicy(allowing: ["127.0.0.0/8", "10.0.0.0/33", "bad"])
        } throws: { error in
            guard let error = error as? AddressPolicyError else { return false }
            return error.entry == "10.0.0.0/33" && error.index == 1
                && error.description.hasPrefix("'10.0.0.0/33' is not a valid network (entry 2): ")
        }
    }

    @Test("addresses parse strictly and print canonically", arguments: [
        ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("0:0:0:0:0:ffff:7f00:1", "::ffff:127.0.0.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("fe80::1", "fe80::1"),
    ])
    func addressText(text: String, canonical: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.description == canonical)
        #expect(IPAddress(bytes: address.bytes) == address)
    }

    @Test("non-numeric or non-canonical IPv4 text is not an address", arguments: [
        "localhost", "127.1", "0x7f000001", "2130706433", "127.0.0.01", "[::1]", "fe80::1%lo", "", " 127.0.0.1", "1.2.3.4.5",
    ])
    func notAddresses(text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test("address bytes and loopback detection for the test sandbox")
    func bytesAndLoopback() throws {
        #expect(IPAddress(ipv4: 169, 254, 169, 254).bytes == [169, 254, 169, 254])
        #expect(IPAddress(bytes: [1, 2, 3]) == nil)
        #expect(Self.address("::1").bytes == Array(repeating: 0, count: 15) + [1])
        for text in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            #expect(Self.address(text).isLocalLoopback, "\(text)")
        }
        for text in ["10.0.0.1", "::2", "64:ff9b::7f00:1", "2002:7f00:1::", "::127.0.0.1", "::ffff:10.0.0.1"] {
            #expect(!Self.address(text).isLocalLoopback, "\(text)")
        }
    }
}
