import ConsentSyncTestKit
import Testing

@testable import ConsentSyncHTTP

/// The address policy applied by a live client. Only 127.0.0.1 and ::1 ever
/// receive traffic: requests aimed elsewhere run with the client's
/// loopback-only sandbox, so even a broken policy could not send a packet off
/// this machine, and the tests tell a policy refusal (`.addressBlocked`) from a
/// sandbox refusal (`.connectFailed`).
@Suite("Address policy at connect time (SSRF)")
struct AddressGuardTests {
    @Test("with the strict policy, loopback in every spelling is refused and no request reaches the receiver")
    func loopbackRefused() async throws {
        try await withReceiver { receiver in
            try await withClient(.init(addressPolicy: .strict)) { client in
                let port = receiver.port
                for url in [
                    receiver.url, "http://[::ffff:127.0.0.1]:\(port)/hook", "http://localhost:\(port)/hook",
                    "http://[::1]:\(port)/hook", "http://127.1:\(port)/hook", "http://2130706433:\(port)/hook",
                    "http://0x7f.0.0.1:\(port)/hook",
                ] {
                    // The refusal is immediate; a generous connect timeout keeps a stalled
                    // machine from turning it into .timeout.
                    let error = await httpError { try await client.send(HTTPRequest(url: url, connectTimeout: .seconds(5))) }
                    #expect(error?.code == .addressBlocked, "\(url)")
                    #expect(error?.isRetryable == false)
                    #expect(error?.curlCode == 7)  // refused by the open-socket callback: no socket was created
                    #expect(error?.refusal?.rule == .loopback, "\(url)")
                    #expect(error?.message.contains("is loopback") == true)
                    #expect(error?.message.contains("allow it with http.allow_networks") == true)
                }
                try await Task.sleep(for: .milliseconds(50))
                #expect(receiver.requests.isEmpty)
            }
        }
    }

    @Test("refused loopback targets never even open a TCP connection")
    func noConnectionAttempt() async throws {
        let ipv4 = try LoopbackListener()
        let ipv6 = try LoopbackListener(ipv6: true)
        let urls = [
            "http://127.0.0.1:\(ipv4.port)/hook", "http://[::ffff:127.0.0.1]:\(ipv4.port)/hook",
            "http://localhost:\(ipv4.port)/hook", "http://[::1]:\(ipv6.port)/hook",
        ]
        try await withClient(.init(addressPolicy: .strict)) { client in
            for url in urls {
                let error = await httpError {
                    try await client.send(HTTPRequest(url: url, timeout: .seconds(5), connectTimeout: .seconds(5)))
                }
                #expect(error?.code == .addressBlocked, "\(url)")
                #expect(error?.refusal?.rule == .loopback)
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(ipv4.acceptPending() == 0)
        #expect(ipv6.acceptPending() == 0)

        // Control: with loopback allowlisted the same URLs do connect (and time
        // out, as the listener never answers), so the accept count above is meaningful.
        // The timeout must leave time to connect on a stalled machine: the four wait it
        // out side by side.
        let allowing = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128"])
        try await withClient(.init(addressPolicy: allowing)) { client in
            let errors = await withTaskGroup(of: (String, HTTPClientError?).self) { group in
                for url in urls {
                    group.addTask { (url, await httpError { try await client.send(HTTPRequest(url: url, timeout: .seconds(3))) }) }
                }
                return await group.reduce(into: [String: HTTPClientError]()) { $0[$1.0] = $1.1 }
            }
            for url in urls {
                #expect(errors[url]?.code == .timeout, "\(url)")
            }
        }
        #expect(ipv4.acceptPending() == 3)
        #expect(ipv6.acceptPending() == 1)
    }

    /// A URL aimed off this machine, what the policy must refuse, and DNS pins for host names.
    struct OffMachineCase: Sendable, CustomTestStringConvertible {
        var url: String
        var address: String
        var rule: AddressPolicy.Rule
        var resolve: [String] = []
        var testDescription: String { "\(self.url) → \(self.address) \(self.rule)" }
    }

    @Test("private, link-local, CGNAT and embedded forms are refused before a socket opens", arguments: [
        OffMachineCase(url: "http://10.0.0.1:9/hook", address: "10.0.0.1", rule: .privateUse),
        OffMachineCase(url: "http://169.254.169.254/latest/meta-data/", address: "169.254.169.254", rule: .linkLocal),
        OffMachineCase(url: "https://100.64.0.1/hook", address: "100.64.0.1", rule: .sharedAddressSpace),
        OffMachineCase(url: "http://192.168.1.1/hook", address: "192.168.1.1", rule: .privateUse),
        OffMachineCase(url: "http://[fd00::1]:9/hook", address: "fd00::1", rule: .privateUse),
        OffMachineCase(url: "http://[fe80::1]:9/hook", address: "fe80::1", rule: .linkLocal),
        OffMachineCase(url: "http://[::ffff:169.254.169.254]/", address: "::ffff:169.254.169.254", rule: .linkLocal),
        OffMachineCase(url: "http://[64:ff9b::a9fe:a9fe]/", address: "64:ff9b::a9fe:a9fe", rule: .linkLocal),
        OffMachineCase(url: "http://[2002:a00:1::1]/", address: "2002:a00:1::1", rule: .privateUse),
        // Host names pinned with CURLOPT_RESOLVE: the check is on the resolved address, as with DNS rebinding.
        OffMachineCase(
            url: "http://metadata.test/latest/meta-data/", address: "169.254.169.254", rule: .linkLocal,
            resolve: ["metadata.test:80:169.254.169.254"]
        ),
        OffMachineCase(
            url: "https://internal.test/hook", address: "10.0.0.1", rule: .privateUse,
            resolve: ["internal.test:443:10.0.0.1"]
        ),
    ])
    func offMachineRefused(_ testCase: OffMachineCase) async throws {
        var configuration = HTTPClient.Configuration(addressPolicy: .strict)
        configuration.connectOnlyToLoopback = true
        try await withClient(configuration) { client in
            var request = HTTPRequest(url: testCase.url, timeout: .seconds(5), connectTimeout: .seconds(5))
            request.resolveOverrides = testCase.resolve
            let error = await httpError { try await client.send(request) }
            // .addressBlocked can only come from the policy; the sandbox would say .connectFailed.
            #expect(error?.code == .addressBlocked)
            #expect(error?.curlCode == 7)
            #expect(error?.isRetryable == false)
            #expect(error?.refusal?.address == IPAddress(testCase.address))
            #expect(error?.refusal?.rule == testCase.rule)
            #expect(error?.message.hasPrefix("refused to connect: \(testCase.address) is ") == true)
        }
    }

    @Test("the loopback-only sandbox itself refuses off-machine addresses the policy lets through")
    func sandboxHolds() async throws {
        var configuration = HTTPClient.Configuration(addressPolicy: try AddressPolicy(allowing: ["10.0.0.0/8"]))
        configuration.connectOnlyToLoopback = true
        try await withClient(configuration) { client in
            for url in ["http://10.0.0.1:9/hook", "http://93.184.216.34:9/hook"] {
                let error = await httpError {
                    try await client.send(HTTPRequest(url: url, timeout: .seconds(5), connectTimeout: .seconds(5)))
                }
                #expect(error?.code == .connectFailed, "\(url)")
                #expect(error?.message.hasPrefix("test sandbox: refused to connect to non-loopback") == true)
                #expect(error?.refusal == nil)
            }
        }
        configuration.addressPolicy = nil
        try await withClient(configuration) { client in
            let error = await httpError {
                try await client.send(HTTPRequest(url: "http://169.254.169.254/", timeout: .seconds(5), connectTimeout: .seconds(5)))
            }
            #expect(error?.code == .connectFailed)
        }
    }

    @Test("with loopback allowlisted, the same requests succeed")
    func allowlistedLoopback() async throws {
        try await withReceiver { receiver in
            let policy = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128"])
            try await withClient(.init(addressPolicy: policy)) { client in
                let port = receiver.port
                for url in [receiver.url, "http://localhost:\(port)/hook", "http://[::ffff:127.0.0.1]:\(port)/hook"] {
                    let response = try await client.send(HTTPRequest(url: url))
                    #expect(response.status == 200, "\(url)")
                }
                #expect(receiver.requests.count == 3)
            }
            // An allowlist for other networks does not admit loopback.
            try await withClient(.init(addressPolicy: try AddressPolicy(allowing: ["10.20.0.0/16"]))) { client in
                let error = await httpError { try await client.send(HTTPRequest(url: receiver.url)) }
                #expect(error?.code == .addressBlocked)
            }
            #expect(receiver.requests.count == 3)
        }
    }

    @Test("a kept-alive connection is checked again before each request, under the current policy")
    func reusedConnectionRechecked() async throws {
        try await withReceiver { receiver in
            let allowing = try AddressPolicy(allowing: ["127.0.0.0/8"])
            try await withClient(.init(addressPolicy: allowing)) { client in
                let first = try await client.send(HTTPRequest(url: receiver.url))
                #expect(first.status == 200)
                #expect(first.newConnections == 1)
                let reused = try await client.send(HTTPRequest(url: receiver.url))
                #expect(reused.newConnections == 0)  // the connection is in the cache

                client.updateAddressPolicy(.strict)
                #expect(client.addressPolicy == .strict)
                let error = await httpError { try await client.send(HTTPRequest(url: receiver.url)) }
                #expect(error?.code == .addressBlocked)
                // CURLE_ABORTED_BY_CALLBACK: the pre-request check on the reused
                // connection refused it, not the open-socket one.
                #expect(error?.curlCode == 42)
                #expect(error?.refusal?.rule == .loopback)
                #expect(error?.message.hasPrefix("refused to send on a connection to 127.0.0.1: 127.0.0.1 is loopback") == true)
                try await Task.sleep(for: .milliseconds(50))
                #expect(receiver.requests.count == 2)

                client.updateAddressPolicy(allowing)
                let again = try await client.send(HTTPRequest(url: receiver.url))
                #expect(again.status == 200)
                #expect(receiver.requests.count == 3)
            }
        }
    }

    @Test("through a proxy, a literal target address is still checked before sending")
    func proxyLiteralAddress() async throws {
        let proxy = try LoopbackListener()
        try await withClient(.init(proxy: "http://127.0.0.1:\(proxy.port)", addressPolicy: .strict)) { client in
            for url in ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.0.0.1]/"] {
                let error = await httpError { try await client.send(HTTPRequest(url: url, timeout: .seconds(5))) }
                #expect(error?.code == .addressBlocked, "\(url)")
                #expect(error?.curlCode == 0)
            }
        }
        #expect(proxy.acceptPending() == 0)
    }
}
