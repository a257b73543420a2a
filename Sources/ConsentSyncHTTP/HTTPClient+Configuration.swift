extension HTTPClient {
    /// Limits and policies shared by every request of one client.
    public struct Configuration: Sendable {
        /// Connections kept or opened to one host; further requests wait their turn.
        public var maxConnectionsPerHost: Int
        /// Connections open at once, and idle ones kept for reuse, across all hosts.
        public var maxTotalConnections: Int
        /// A proxy URL such as "http://proxy:3128". Nil means no proxy, whatever
        /// `HTTPS_PROXY`, `ALL_PROXY` or `NO_PROXY` say; when set, `NO_PROXY`
        /// is ignored too, so every request goes through it.
        public var proxy: String?
        public var userAgent: String
        /// The guard against server-side request forgery: which addresses
        /// requests may connect to. Nil means no guard (the default, for tests
        /// against receivers on 127.0.0.1); production uses
        /// ``AddressPolicy/strict`` plus an allowlist.
        ///
        /// Checked on the address actually connected to, when the socket is
        /// opened, and again before each request on a reused connection, so DNS
        /// rebinding does not get around it. Refusals fail with
        /// ``HTTPClientError/Code/addressBlocked`` before any packet is sent.
        /// With a ``proxy`` the proxy makes the onward connection: only URLs
        /// whose host is a literal IP address can be checked (before sending).
        /// ``HTTPClient/updateAddressPolicy(_:)`` replaces it at run time.
        public var addressPolicy: AddressPolicy?
        /// URL schemes requests may use: a subset of "http" and "https",
        /// lowercase. Both by default; `["https"]` refuses plain HTTP with
        /// ``HTTPClientError/Code/protocolNotAllowed``.
        public var allowedSchemes: Set<String>
        /// The setting that fills ``allowedSchemes``, named in refusals.
        public var allowedSchemesSetting: String
        /// Requests with a larger body fail with
        /// ``HTTPClientError/Code/invalidRequest`` before anything is sent.
        public var maxRequestBodyBytes: Int
        /// The transfer is aborted once the response's header lines (status
        /// lines and interim responses included) exceed this many bytes.
        public var maxResponseHeaderBytes: Int

        /// Test seam: refuse, when the socket is opened, every address that is
        /// not loopback, after the ``addressPolicy`` check. Lets tests point the
        /// client at 10.x or 169.254.169.254 knowing no packet can leave the
        /// machine even if the policy were broken; such refusals surface as
        /// `.connectFailed`, never `.addressBlocked`.
        var connectOnlyToLoopback = false

        public init(
            maxConnectionsPerHost: Int = 32,
            maxTotalConnections: Int = 256,
            proxy: String? = nil,
            userAgent: String = "consent-sync",
            addressPolicy: AddressPolicy? = nil,
            allowedSchemes: Set<String> = ["http", "https"],
            maxRequestBodyBytes: Int = 1 << 20,
            maxResponseHeaderBytes: Int = 16 << 10,
            allowedSchemesSetting: String = "http.allowed_schemes"
        ) {
            self.maxConnectionsPerHost = maxConnectionsPerHost
            self.maxTotalConnections = maxTotalConnections
            self.proxy = proxy
            self.userAgent = userAgent
            self.addressPolicy = addressPolicy
            self.allowedSchemes = allowedSchemes
            self.maxRequestBodyBytes = maxRequestBodyBytes
            self.maxResponseHeaderBytes = maxResponseHeaderBytes
            self.allowedSchemesSetting = allowedSchemesSetting
        }
    }
}

extension HTTPClient.Configuration {
    /// The schemes libcurl may use: ``allowedSchemes`` restricted to http and
    /// https, in libcurl's `CURLOPT_PROTOCOLS_STR` syntax ("" when none).
    var curlProtocols: String {
        ["http", "https"].filter { self.allowedSchemes.contains($0) }.joined(separator: ",")
    }

    /// "https", "http and https", or "none".
    var allowedSchemesText: String {
        let schemes = ["http", "https"].filter { self.allowedSchemes.contains($0) }
        return schemes.isEmpty ? "none" : schemes.joined(separator: " and ")
    }
}
