#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `host:port` for the ops endpoints: `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`,
/// `0.0.0.0:9464`. Port 0 picks a free port.
struct ConfigListenAddress: Sendable, Equatable {
    /// An IPv4 or IPv6 address (without brackets) or a host name.
    var host: String
    var port: Int

    static let valid = "use host:port, e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464 (all addresses)"

    /// The address, or why `text` is not one.
    static func parse(_ text: String) -> Result<ConfigListenAddress, ListenAddressError> {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(.init("the IPv6 address has no closing ']'")) }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(.init("the port is missing after ']'")) }
            portPart = rest.dropFirst()
            guard isIPv6(String(hostPart)) else { return .failure(.init("'\(hostPart.prefix(45))' is not an IPv6 address")) }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return .failure(.init("the port is missing")) }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
            if hostPart.contains(":") {
                return .failure(.init("an IPv6 address needs brackets, e.g. [::1]:9464"))
            }
            if hostPart.isEmpty {
                return .failure(.init("the host is missing"))
            }
            if hostPart.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
                guard isIPv4(String(hostPart)) else { return .failure(.init("'\(hostPart.prefix(45))' is not an IPv4 address")) }
            } else if !isHostName(hostPart) {
                return .failure(.init("'\(hostPart.prefix(45))' is not an IP address or a host name"))
            }
        }
        guard !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }), portPart.count <= 5,
            let port = Int(portPart), (0...65535).contains(port)
        else {
            return .failure(.init("the port must be a number in 0...65535 (0 picks a free one)"))
        }
        return .success(ConfigListenAddress(host: String(hostPart), port: port))
    }

    /// As written in the config: `[::1]:9464`.
    var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    private static func isIPv4(_ text: String) -> Bool {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1
    }

    private static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// RFC 1123 labels: letters, digits and inner hyphens, up to 63 characters each.
    private static func isHostName(_ text: Substring) -> Bool {
        guard text.count <= 253 else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }
}

/// Why an `ops.listen` value is not a `host:port`.
struct ListenAddressError: Error, Sendable {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}
