import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `getaddrinfo` for registration-time checks, run on a thread of its own:
/// it blocks, and Swift's cooperative pool must not.
enum HostResolver {
    /// Every address `host` resolves to for a TCP connection to `port`, de-duplicated, in resolver order.
    static func resolve(_ host: String, port: Int) async throws(HTTPClientError) -> [IPAddress] {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[IPAddress], HTTPClientError>, Never>) in
            let thread = Thread {
                continuation.resume(returning: Self.resolveBlocking(host, port: port))
            }
            thread.name = "consent-sync-resolve"
            thread.start()
        }
        return try result.get()
    }

    private static func resolveBlocking(_ host: String, port: Int) -> Result<[IPAddress], HTTPClientError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc) || canImport(Musl)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else {
            return .failure(
                HTTPClientError(
                    code: .dnsFailed,
                    message: "\(host) does not resolve: \(String(cString: gai_strerror(status)))"
                )
            )
        }
        defer { freeaddrinfo(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let current = entry?.pointee {
            entry = current.ai_next
            guard let socketAddress = current.ai_addr else { continue }
            let address: IPAddress?
            switch current.ai_family {
            case AF_INET:
                address = socketAddress.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                    withUnsafeBytes(of: pointer.pointee.sin_addr) { IPAddress(bytes: $0) }
                }
            case AF_INET6:
                address = socketAddress.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                    withUnsafeBytes(of: pointer.pointee.sin6_addr) { IPAddress(bytes: $0) }
                }
            default:
                address = nil
            }
            if let address, !addresses.contains(address) {
                addresses.append(address)
            }
        }
        guard !addresses.isEmpty else {
            return .failure(HTTPClientError(code: .dnsFailed, message: "\(host) resolves to no IPv4 or IPv6 address"))
        }
        return .success(addresses)
    }
}
