import ConsentSyncTestKit
import Foundation
import Testing

@testable import ConsentSyncHTTP

/// Proxy variables in the environment never apply: only
/// `Configuration.proxy` decides. Changing this process's environment would
/// race every other test, so the checks run in a child process (this test
/// binary again, filtered to ``ProxyEnvironmentProbe``) started with hostile
/// proxy variables pointing at a listener that must see nothing.
@Suite("Proxy environment variables are ignored")
struct ProxyEnvironmentTests {
    @Test("without a configured proxy, http_proxy, HTTPS_PROXY and ALL_PROXY are ignored")
    func proxyVariablesIgnored() async throws {
        let proxy = try LoopbackListener()
        try await withReceiver { receiver in
            var environment: [String: String] = [:]
            for name in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
                environment[name] = "http://127.0.0.1:\(proxy.port)"
            }
            try await Self.runProbe(.direct, receiver: receiver.url, proxy: "", environment: environment)
            #expect(receiver.requests.count == 1)
        }
        #expect(proxy.acceptPending() == 0)
    }

    @Test("with a configured proxy, NO_PROXY is ignored: every request goes through it")
    func noProxyIgnored() async throws {
        let proxy = try LoopbackListener()
        try await withReceiver { receiver in
            let environment = ["no_proxy": "127.0.0.1,localhost,*", "NO_PROXY": "127.0.0.1,localhost,*"]
            try await Self.runProbe(.proxied, receiver: receiver.url, proxy: "http://127.0.0.1:\(proxy.port)", environment: environment)
            #expect(receiver.requests.isEmpty)
        }
        #expect(proxy.acceptPending() == 1)
    }

    /// Runs ``ProxyEnvironmentProbe`` in a child process with `environment` added.
    private static func runProbe(
        _ mode: ProxyProbeEnvironment.Mode,
        receiver: String,
        proxy: String,
        environment: [String: String]
    ) async throws {
        var childEnvironment = ProcessInfo.processInfo.environment
        for name in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"] {
            childEnvironment[name] = nil
        }
        childEnvironment.merge(environment) { $1 }
        childEnvironment[ProxyProbeEnvironment.modeVariable] = mode.rawValue
        childEnvironment[ProxyProbeEnvironment.receiverVariable] = receiver
        childEnvironment[ProxyProbeEnvironment.proxyVariable] = proxy

        // A whole test runner: wait for it on a thread of its own, not the cooperative pool.
        let child = try await HelperProgram.run(
            "/proc/self/exe",
            ["--testing-library", "swift-testing", "--filter", "ProxyEnvironmentProbe"],
            environment: childEnvironment,
            mergingStandardError: true,
            timeout: .seconds(300)
        )
        let text = child.output
        #expect(child.status == 0, "\(text)")
        #expect(text.contains("1 test in 1 suite passed"), "\(text)")
    }
}

/// What the parent tells the child of ``ProxyEnvironmentTests``.
enum ProxyProbeEnvironment {
    enum Mode: String {
        /// No proxy configured: the request must reach the receiver directly.
        case direct
        /// A proxy configured: the request must go to it (which never answers).
        case proxied
    }

    static let modeVariable = "CONSENT_SYNC_TEST_PROXY_PROBE_MODE"
    static let receiverVariable = "CONSENT_SYNC_TEST_PROXY_PROBE_RECEIVER"
    static let proxyVariable = "CONSENT_SYNC_TEST_PROXY_PROBE_PROXY"
    static var mode: Mode? { ProcessInfo.processInfo.environment[modeVariable].flatMap(Mode.init(rawValue:)) }
}

/// Runs only inside the child process of ``ProxyEnvironmentTests``.
@Suite("ProxyEnvironmentProbe", .enabled(if: ProxyProbeEnvironment.mode != nil))
struct ProxyEnvironmentProbe {
    @Test("child: send with proxy variables in the environment")
    func probe() async throws {
        let environment = ProcessInfo.processInfo.environment
        let url = try #require(environment[ProxyProbeEnvironment.receiverVariable])
        switch ProxyProbeEnvironment.mode {
        case .direct:
            try await withClient { client in
                let response = try await client.send(HTTPRequest(url: url, timeout: .seconds(5)))
                #expect(response.status == 200)
            }
        case .proxied:
            let proxy = try #require(environment[ProxyProbeEnvironment.proxyVariable])
            try await withClient(.init(proxy: proxy)) { client in
                // Long enough to connect to the proxy on a stalled machine: the parent counts that connection.
                let error = await httpError { try await client.send(HTTPRequest(url: url, timeout: .seconds(3))) }
                #expect(error?.code == .timeout)  // the proxy listener never answers
            }
        case nil:
            Issue.record("no probe mode")
        }
    }
}
