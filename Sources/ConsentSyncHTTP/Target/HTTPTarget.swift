/// A request URL as the client's policies see it: what ``HTTPClient/Configuration/check(url:)``
/// found, for registration-time feedback.
public struct HTTPTarget: Sendable, Hashable {
    /// "http" or "https", lowercase.
    public var scheme: String
    /// The host as libcurl reads it: a name, a dotted-quad IPv4 address
    /// (libcurl normalises forms such as "127.1"), or an IPv6 address without brackets.
    public var host: String
    /// The port, explicit or the scheme's default.
    public var port: Int
    /// The host as an address when the URL names one literally.
    public var literalAddress: IPAddress?
    /// Every address the host name resolved to, all checked; empty for a
    /// literal address or when the address policy did not call for resolving.
    public var resolvedAddresses: [IPAddress]

    public init(scheme: String, host: String, port: Int, literalAddress: IPAddress?, resolvedAddresses: [IPAddress] = []) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.literalAddress = literalAddress
        self.resolvedAddresses = resolvedAddresses
    }
}
