#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A bare TCP listener on 127.0.0.1 or ::1 that never answers: the kernel
/// completes any connection attempt into its accept queue, so
/// ``acceptPending()`` tells whether anything tried to connect at all.
final class LoopbackListener {
    let port: Int
    private let descriptor: Int32

    init(ipv6: Bool = false) throws {
        #if canImport(Glibc)
        let stream = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #else
        let stream = SOCK_STREAM
        #endif
        let descriptor = socket(ipv6 ? AF_INET6 : AF_INET, stream, 0)
        guard descriptor >= 0 else { throw ListenerError(step: "socket") }
        var bound = false
        defer { if !bound { close(descriptor) } }
        var port = 0
        if ipv6 {
            var only: Int32 = 1
            setsockopt(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &only, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_addr = in6addr_loopback
            port = try Self.bindAndListen(descriptor, &address) { Int(UInt16(bigEndian: $0.sin6_port)) }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            port = try Self.bindAndListen(descriptor, &address) { Int(UInt16(bigEndian: $0.sin_port)) }
        }
        bound = true
        self.descriptor = descriptor
        self.port = port
    }

    private static func bindAndListen<Address>(
        _ descriptor: Int32,
        _ address: inout Address,
        port: (Address) -> Int
    ) throws -> Int {
        var length = socklen_t(MemoryLayout<Address>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                bind(descriptor, socketAddress, length) == 0 && listen(descriptor, 16) == 0
                    && getsockname(descriptor, socketAddress, &length) == 0
            }
        }
        guard ok else { throw ListenerError(step: "bind/listen") }
        return port(address)
    }

    deinit {
        close(self.descriptor)
    }

    /// Accepts (and closes) every connection waiting in the queue; returns how many there were.
    func acceptPending() -> Int {
        var count = 0
        while true {
            let connection = accept(self.descriptor, nil, nil)
            guard connection >= 0 else { return count }
            close(connection)
            count += 1
        }
    }
}

struct ListenerError: Error, CustomStringConvertible {
    var step: String
    var description: String { "loopback listener: \(self.step) failed (errno \(errno))" }
}
