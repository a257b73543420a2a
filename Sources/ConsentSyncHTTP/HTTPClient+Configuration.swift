import CCurl

extension HTTPClient {
    /// Limits and policies shared by every request of one client.
    public struct Configuration: Sendable {
        /// Connections kept or opened to one host; further requests wait their turn.
        public var maxConnectionsPerHost: Int
        /// Connections open at once, and idle ones kept for reuse, across all hosts.
        public var maxTotalConnections: Int
        /// A proxy URL such as "http://proxy:3128". Nil means no proxy, whatever
        /// `HTTPS_PROXY` or `http_proxy` say.
        public var proxy: String?
        public var userAgent: String
        /// Refuse to connect to loopback, private, link-local and other
        /// non-public addresses, checked on the address actually connected
        /// to (so DNS rebinding cannot get around it). Fails such requests with
        /// ``HTTPClientError/Code/addressBlocked``. Not applied when a
        /// ``proxy`` is set: the proxy makes the onward connection.
        public var blockPrivateAddresses: Bool

        public init(
            maxConnectionsPerHost: Int = 32,
            maxTotalConnections: Int = 256,
            proxy: String? = nil,
            userAgent: String = "consent-sync",
            blockPrivateAddresses: Bool = false
        ) {
            self.maxConnectionsPerHost = maxConnectionsPerHost
            self.maxTotalConnections = maxTotalConnections
            self.proxy = proxy
            self.userAgent = userAgent
            self.blockPrivateAddresses = blockPrivateAddresses
        }
    }
}

extension HTTPClient.Configuration {
    /// Whether ``blockPrivateAddresses`` refuses the numeric address `address`
    /// (non-numeric text is refused too).
    static func refuses(address: String) -> Bool {
        ccurl_address_is_refused(address) != 0
    }
}
