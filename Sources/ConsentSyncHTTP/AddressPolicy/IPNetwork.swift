/// A block of addresses in CIDR notation: "10.20.0.0/16", "::1/128".
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    /// The first address of the block (its host bits are zero).
    public let address: IPAddress
    /// Leading bits fixed by the block: 0...32 for IPv4, 0...128 for IPv6.
    public let prefixLength: Int

    /// Parses CIDR notation. A bare address means that one address (/32 or /128).
    ///
    /// Strict on purpose: host bits must be zero ("10.20.1.0/16" is refused with
    /// a hint to write 10.20.0.0/16), because a typo there silently widens or
    /// narrows what an allowlist lets through.
    public init(_ text: String) throws(AddressPolicyError) {
        let trimmed = text.trimmingWhitespace()
        guard !trimmed.isEmpty else {
            throw AddressPolicyError(entry: text, reason: "it is empty")
        }
        let parts = trimmed.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addressText = parts[0]
        if addressText.hasPrefix("[") {
            throw AddressPolicyError(entry: text, reason: "write an IPv6 network without brackets, as in fd00::/8")
        }
        if addressText.contains("%") {
            throw AddressPolicyError(entry: text, reason: "a zone index (%…) is not allowed in a network")
        }
        guard let address = IPAddress(addressText) else {
            throw AddressPolicyError(
                entry: text,
                reason: "'\(addressText)' is not an IPv4 or IPv6 address; write a CIDR such as 10.20.0.0/16 or ::1/128"
            )
        }
        var prefixLength = address.bitWidth
        if parts.count == 2 {
            let prefixText = parts[1]
            guard !prefixText.isEmpty, prefixText.utf8.allSatisfy({ (0x30...0x39).contains($0) }), prefixText.utf8.count <= 3,
                let length = Int(prefixText), length <= address.bitWidth
            else {
                throw AddressPolicyError(
                    entry: text,
                    reason: "the prefix length '\(prefixText)' is not a whole number in 0...\(address.bitWidth)"
                )
            }
            prefixLength = length
        }
        let network = IPNetwork(uncheckedAddress: address, prefixLength: prefixLength)
        guard network.address == address else {
            throw AddressPolicyError(
                entry: text,
                reason: "host bits are set after the /\(prefixLength) prefix; did you mean \(network)?"
            )
        }
        self = network
    }

    /// The block of `prefixLength` leading bits of `address` (host bits cleared).
    public init(address: IPAddress, prefixLength: Int) throws(AddressPolicyError) {
        guard (0...address.bitWidth).contains(prefixLength) else {
            throw AddressPolicyError(
                entry: "\(address)/\(prefixLength)",
                reason: "the prefix length is not in 0...\(address.bitWidth)"
            )
        }
        self.init(uncheckedAddress: address, prefixLength: prefixLength)
    }

    /// For literals known to be valid, such as the special-purpose table.
    init(uncheckedAddress address: IPAddress, prefixLength: Int) {
        self.address = IPAddress(value: address.value & Self.mask(prefixLength, bitWidth: address.bitWidth), isIPv4: address.isIPv4)
        self.prefixLength = prefixLength
    }

    /// Whether `address` is in this block. IPv4 blocks contain only IPv4
    /// addresses; an IPv4-mapped IPv6 address is matched through the policy's
    /// embedded-address rules, not here.
    public func contains(_ address: IPAddress) -> Bool {
        guard address.isIPv4 == self.address.isIPv4 else { return false }
        let mask = Self.mask(self.prefixLength, bitWidth: address.bitWidth)
        return address.value & mask == self.address.value
    }

    /// "10.20.0.0/16"
    public var description: String { "\(self.address)/\(self.prefixLength)" }

    private static func mask(_ prefixLength: Int, bitWidth: Int) -> UInt128 {
        guard prefixLength > 0 else { return 0 }
        let all: UInt128 = bitWidth == 32 ? 0xFFFF_FFFF : .max
        return all & ~((all >> prefixLength))
    }
}

/// A network entry of an allowlist that could not be read.
public struct AddressPolicyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The text as given.
    public var entry: String
    /// The entry's 0-based position in the list given to ``AddressPolicy/init(allowing:)``, if any.
    public var index: Int?
    /// What is wrong with it.
    public var reason: String

    public init(entry: String, index: Int? = nil, reason: String) {
        self.entry = entry
        self.index = index
        self.reason = reason
    }

    /// For example "'10.20.1.0/16' is not a valid network (entry 3): host bits are set after the /16 prefix; did you mean 10.20.0.0/16?".
    public var description: String {
        let position = self.index.map { " (entry \($0 + 1))" } ?? ""
        return "'\(self.entry)' is not a valid network\(position): \(self.reason)"
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> Substring {
        var result = Substring(self)
        while let first = result.first, first.isWhitespace { result.removeFirst() }
        while let last = result.last, last.isWhitespace { result.removeLast() }
        return result
    }
}
