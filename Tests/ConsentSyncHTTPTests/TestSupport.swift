import ConsentSyncHTTP
import ConsentSyncTestKit
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body` against a fresh receiver, stopping it whatever happens.
func withReceiver<T>(
    path: String = "/hook",
    responder: @escaping WebhookReceiver.Responder = { _ in .status(200) },
    _ body: (WebhookReceiver) async throws -> T
) async throws -> T {
    let receiver = try await WebhookReceiver.start(path: path, responder: responder)
    do {
        let result = try await body(receiver)
        await receiver.stop()
        return result
    } catch {
        await receiver.stop()
        throw error
    }
}

/// Runs `body` with a fresh client, shutting it down whatever happens.
func withClient<T>(
    _ configuration: HTTPClient.Configuration = .init(),
    _ body: (HTTPClient) async throws -> T
) async throws -> T {
    let client = HTTPClient(configuration: configuration, logger: Logger(label: "consent-sync.test.http"))
    defer { client.shutdown() }
    return try await body(client)
}

/// The error `operation` throws, as an `HTTPClientError`; records an issue otherwise.
func httpError(
    _ operation: () async throws -> HTTPResponse
) async -> HTTPClientError? {
    do {
        let response = try await operation()
        Issue.record("expected an HTTPClientError, got status \(response.status)")
        return nil
    } catch let error as HTTPClientError {
        return error
    } catch {
        Issue.record("expected an HTTPClientError, got \(error)")
        return nil
    }
}

/// A 127.0.0.1 port that nothing listens on: bound, read back, closed.
func unusedLoopbackPort() throws -> Int {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw PortError() }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
            bind(fd, socketAddress, length) == 0 && getsockname(fd, socketAddress, &length) == 0
        }
    }
    guard bound else { throw PortError() }
    return Int(UInt16(bigEndian: address.sin_port))
}

struct PortError: Error {}

