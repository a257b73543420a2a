import CCurl
import Dispatch
import Foundation
import Logging
import Synchronization

/// Owns libcurl's multi handle and the dedicated thread that drives it.
///
/// Other threads talk to the loop only through `shared`: they queue
/// submissions or cancellations and call `curl_multi_wakeup`. Everything else
/// (easy handles, callbacks, the connection cache) lives on the loop thread,
/// so blocking libcurl work never occupies Swift's cooperative pool.
final class CurlMultiLoop: @unchecked Sendable {
    // @unchecked Sendable: `multi` is used only on the loop thread, except for
    // `curl_multi_wakeup`, which libcurl documents as callable from any thread
    // and which we call only while holding `shared`'s lock with the phase not
    // yet `.stopped`; the loop thread sets `.stopped` under that lock before
    // `curl_multi_cleanup`. All other stored properties are Sendable.
    private let multi: UnsafeMutableRawPointer
    private let shared = Mutex(Shared())
    private let exited = DispatchGroup()
    private let configuration: HTTPClient.Configuration
    /// ``HTTPClient/Configuration/curlProtocols`` as a C string, built once rather than for
    /// every request (a Swift string this short is stored inline and copied out per use).
    private let protocols: ContiguousArray<CChar>
    private let logger: Logger

    private struct Shared {
        enum Phase { case running, stopping, stopped }
        var phase = Phase.running
        var submissions: [PendingRequest] = []
        var cancellations: [UInt64] = []
    }

    /// Upper bound on one `curl_multi_poll`; libcurl shortens it to its own next timeout.
    private static let pollMilliseconds: CInt = 1000

    /// Easy handles kept for reuse once their transfer is done. A fresh handle allocates and
    /// clears several kilobytes (its state and a 16 KiB receive buffer), which made glibc
    /// consolidate its free lists at nearly every request: about 10 % of the daemon's CPU in
    /// a drain went to malloc and free.
    private static let maxIdleHandles = 256

    init(configuration: HTTPClient.Configuration, logger: Logger) {
        guard let multi = curl_multi_init() else {
            fatalError("curl_multi_init failed: out of memory")
        }
        self.multi = multi
        self.configuration = configuration
        self.protocols = configuration.curlProtocols.utf8CString
        self.logger = logger
        let perHost = max(1, configuration.maxConnectionsPerHost)
        let total = max(perHost, configuration.maxTotalConnections)
        // HTTP/2 multiplexing where the server offers it (over TLS via ALPN).
        Self.check(ccurl_multi_setopt_long(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX), "PIPELINING", logger)
        Self.check(ccurl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, perHost), "MAX_HOST_CONNECTIONS", logger)
        Self.check(ccurl_multi_setopt_long(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total), "MAX_TOTAL_CONNECTIONS", logger)
        // The idle-connection cache: keep-alive reuse for every open connection.
        Self.check(ccurl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, total), "MAXCONNECTS", logger)

        self.exited.enter()
        let thread = Thread { [self] in self.run() }
        thread.name = "consent-sync-curl"
        thread.start()
    }

    private static func check(_ code: CURLMcode, _ option: String, _ logger: Logger) {
        if code != CURLM_OK {
            logger.warning(
                "libcurl rejected a multi option",
                metadata: ["curl.option": "CURLMOPT_\(option)", "curl.error": "\(String(cString: curl_multi_strerror(code)))"]
            )
        }
    }

    // MARK: Any thread

    /// Queues `pending` for the loop, or fails it when the loop is stopping.
    func submit(_ pending: PendingRequest) {
        let accepted = self.shared.withLock { shared in
            guard shared.phase == .running else { return false }
            shared.submissions.append(pending)
            // Queued behind others: the wake-up of the first is still due (the loop takes the
            // whole queue at once, after waking), so a round's requests cost one wake-up.
            if shared.submissions.count == 1 {
                curl_multi_wakeup(self.multi)
            }
            return true
        }
        if !accepted {
            pending.complete(.failure(.clientShutDown))
        }
    }

    /// Asks the loop to drop the transfer of request `id`; its caller already got its error.
    func cancel(_ id: UInt64) {
        self.shared.withLock { shared in
            guard shared.phase == .running else { return }
            shared.cancellations.append(id)
            curl_multi_wakeup(self.multi)
        }
    }

    /// Fails every queued and in-flight request with `.shutdown`, and returns
    /// once the thread has exited and the multi handle is cleaned up. Idempotent.
    func shutdown() {
        self.shared.withLock { shared in
            guard shared.phase == .running else { return }
            shared.phase = .stopping
            curl_multi_wakeup(self.multi)
        }
        self.exited.wait()
    }

    // MARK: Loop thread

    private func run() {
        // Tables confined to this thread: the transfer of each attached easy handle.
        var transfers: [UnsafeMutableRawPointer: CurlTransfer] = [:]
        var handlesByID: [UInt64: UnsafeMutableRawPointer] = [:]
        var idleHandles: [UnsafeMutableRawPointer] = []

        func detach(_ easy: UnsafeMutableRawPointer) -> CurlTransfer? {
            guard let transfer = transfers.removeValue(forKey: easy) else { return nil }
            handlesByID.removeValue(forKey: transfer.pending.id)
            curl_multi_remove_handle(self.multi, easy)
            return transfer
        }

        /// Back to the defaults (`curl_easy_reset`: every option, callback and pointer to the
        /// old transfer dropped; the multi handle keeps the connections) for the next request.
        func recycle(_ easy: UnsafeMutableRawPointer) {
            curl_easy_reset(easy)
            if idleHandles.count < Self.maxIdleHandles {
                idleHandles.append(easy)
            } else {
                curl_easy_cleanup(easy)
            }
        }

        self.logger.debug("HTTP client loop started", metadata: ["curl.version": "\(String(cString: curl_version()))"])
        while true {
            let (submissions, cancellations, stopping) = self.shared.withLock { shared in
                defer {
                    shared.submissions.removeAll()
                    shared.cancellations.removeAll()
                }
                return (shared.submissions, shared.cancellations, shared.phase == .stopping)
            }
            if stopping {
                for pending in submissions {
                    pending.complete(.failure(.clientShutDown))
                }
                break
            }
            for pending in submissions where pending.isWaiting {
                guard let easy = idleHandles.popLast() ?? curl_easy_init() else {
                    self.finished(pending, .failure(HTTPClientError(code: .other, message: "curl_easy_init failed (out of memory?)")))
                    continue
                }
                do throws(HTTPClientError) {
                    let transfer = try CurlTransfer(pending: pending, easy: easy, configuration: self.configuration, protocols: self.protocols)
                    let code = curl_multi_add_handle(self.multi, easy)
                    guard code == CURLM_OK else {
                        throw HTTPClientError(
                            code: .other,
                            message: "curl_multi_add_handle failed: \(String(cString: curl_multi_strerror(code)))"
                        )
                    }
                    transfers[easy] = transfer
                    handlesByID[pending.id] = easy
                } catch {
                    recycle(easy)
                    self.finished(pending, .failure(error))
                }
            }
            for id in cancellations {
                if let easy = handlesByID[id], detach(easy) != nil {
                    recycle(easy)
                    self.logger.debug("HTTP request cancelled", metadata: ["http.request.id": "\(id)"])
                }
            }

            var running: CInt = 0
            let performCode = curl_multi_perform(self.multi, &running)
            if performCode != CURLM_OK {
                self.logger.error(
                    "curl_multi_perform failed",
                    metadata: ["curl.error": "\(String(cString: curl_multi_strerror(performCode)))"]
                )
            }
            var easy: UnsafeMutableRawPointer?
            var code = CURLE_OK
            while ccurl_multi_next_done(self.multi, &easy, &code) == 1 {
                guard let handle = easy, let transfer = detach(handle) else { continue }
                let result = transfer.result(for: code)  // reads the handle's info: before the reset
                recycle(handle)
                self.finished(transfer.pending, result)
            }

            _ = curl_multi_poll(self.multi, nil, 0, Self.pollMilliseconds, nil)
        }

        // Stopping: nothing new can be queued now, and `cancel` no longer wakes us.
        let late = self.shared.withLock { shared in
            shared.phase = .stopped
            defer { shared.submissions.removeAll() }
            return shared.submissions
        }
        for pending in late {
            pending.complete(.failure(.clientShutDown))
        }
        for easy in Array(transfers.keys) {
            detach(easy)?.pending.complete(.failure(.clientShutDown))
            curl_easy_cleanup(easy)
        }
        for easy in idleHandles {
            curl_easy_cleanup(easy)
        }
        curl_multi_cleanup(self.multi)
        self.logger.debug("HTTP client loop stopped")
        self.exited.leave()
    }

    private func finished(_ pending: PendingRequest, _ result: Result<HTTPResponse, HTTPClientError>) {
        // Metadata only: URLs may carry tokens and headers carry signatures.
        switch result {
        case .success(let response):
            self.logger.trace(
                "HTTP request finished",
                metadata: [
                    "http.request.id": "\(pending.id)",
                    "http.status": "\(response.status)",
                    "http.version": "\(response.httpVersion)",
                    "http.duration": "\(response.duration)",
                    "http.new_connections": "\(response.newConnections)",
                ]
            )
        case .failure(let error):
            self.logger.debug(
                "HTTP request failed",
                metadata: ["http.request.id": "\(pending.id)", "error.code": "\(error.code)", "error.message": "\(error.message)"]
            )
        }
        pending.complete(result)
    }
}
