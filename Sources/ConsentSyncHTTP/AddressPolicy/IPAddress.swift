#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A numeric IPv4 or IPv6 address, as a value.
///
/// Parsing is strict (`inet_pton`): dotted-quad IPv4 without leading zeros,
/// IPv6 without brackets or zone. Printing is canonical (`inet_ntop`, RFC 5952
/// for IPv6), so messages name an address the way `ip` and curl do.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address as a 128-bit number; an IPv4 address occupies the low 32 bits.
    let value: UInt128
    /// True for IPv4, false for IPv6.
    public let isIPv4: Bool

    init(value: UInt128, isIPv4: Bool) {
        self.value = isIPv4 ? value & 0xFFFF_FFFF : value
        self.isIPv4 = isIPv4
    }

    /// Parses a numeric address such as "10.0.0.1", "::1" or "::ffff:127.0.0.1".
    /// Returns nil for anything else (host names, brackets, zones, "127.1").
    public init?(_ text: some StringProtocol) {
        guard let address = String(text).withCString({ IPAddress(cString: $0) }) else { return nil }
        self = address
    }

    /// Parses a NUL-terminated string (libcurl's, before each request) in place, without a
    /// Swift string or array in between.
    init?(cString: UnsafePointer<CChar>) {
        let parsed = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { buffer -> IPAddress? in
            guard let base = buffer.baseAddress else { return nil }
            if inet_pton(AF_INET, cString, base) == 1 {
                return IPAddress(bytes: UnsafeBufferPointer(start: base, count: 4))
            }
            if inet_pton(AF_INET6, cString, base) == 1 {
                return IPAddress(bytes: UnsafeBufferPointer(start: base, count: 16))
            }
            return nil
        }
        guard let parsed else { return nil }
        self = parsed
    }

    /// An address from its network-order bytes: 4 for IPv4, 16 for IPv6.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        var value: UInt128 = 0
        for byte in bytes {
            value = value << 8 | UInt128(byte)
        }
        self.init(value: value, isIPv4: bytes.count == 4)
    }

    /// An IPv4 address from its four parts, `IPAddress(ipv4: 169, 254, 169, 254)`.
    public init(ipv4 a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        self.init(value: UInt128(a) << 24 | UInt128(b) << 16 | UInt128(c) << 8 | UInt128(d), isIPv4: true)
    }

    /// Network-order bytes: 4 for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        let count = self.bitWidth / 8
        return (0..<count).map { index in UInt8(truncatingIfNeeded: self.value >> (8 * (count - 1 - index))) }
    }

    /// 32 or 128.
    public var bitWidth: Int { self.isIPv4 ? 32 : 128 }

    /// "127.0.0.1", "::1", "::ffff:127.0.0.1".
    public var description: String {
        var bytes = self.bytes
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = self.isIPv4 ? AF_INET : AF_INET6
        guard inet_ntop(family, &bytes, &text, socklen_t(text.count)) != nil else {
            return self.bytes.map { String($0) }.joined(separator: ".")  // not reached for 4 or 16 bytes
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The IPv4 address in bits `offset ..< offset + 32` (counted from the most
    /// significant bit) of an IPv6 address.
    func embeddedIPv4(atBit offset: Int) -> IPAddress {
        IPAddress(value: (self.value >> (96 - offset)) & 0xFFFF_FFFF, isIPv4: true)
    }
}

extension IPAddress {
    /// 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104: addresses the kernel delivers
    /// on this machine. NAT64 or 6to4 forms of 127.x are not: they leave it.
    var isLocalLoopback: Bool {
        if self.isIPv4 { return self.value >> 24 == 127 }
        if self.value == 1 { return true }
        return self.value >> 32 == 0xFFFF && (self.value >> 24) & 0xFF == 127
    }
}
