/// Per-request TLS settings for an `https://` URL.
///
/// Certificate and host name verification is always on and cannot be turned
/// off; these options only choose what to trust and which identity to present.
/// Requests with a different CA bundle or client certificate never share a
/// kept-alive connection (libcurl matches the TLS configuration before reusing
/// one; a test holds it to that), so one subscriber's client certificate is
/// never presented on another's behalf.
public struct TLSOptions: Sendable, Hashable {
    /// A PEM file of CA certificates to trust instead of the system store
    /// (`CURLOPT_CAINFO`). Nil: the system store.
    public var caBundlePath: String?
    /// A PEM client certificate (chain) for mutual TLS (`CURLOPT_SSLCERT`).
    public var clientCertificatePath: String?
    /// The PEM private key of ``clientCertificatePath`` (`CURLOPT_SSLKEY`),
    /// unencrypted. Nil: the key is in the certificate file.
    public var clientKeyPath: String?

    public init(caBundlePath: String? = nil, clientCertificatePath: String? = nil, clientKeyPath: String? = nil) {
        self.caBundlePath = caBundlePath
        self.clientCertificatePath = clientCertificatePath
        self.clientKeyPath = clientKeyPath
    }
}

extension TLSOptions {
    /// Rejects combinations libcurl would silently ignore or misread.
    func validate() throws(HTTPClientError) {
        for (name, path) in [
            ("caBundlePath", self.caBundlePath), ("clientCertificatePath", self.clientCertificatePath),
            ("clientKeyPath", self.clientKeyPath),
        ] {
            guard let path else { continue }
            if path.isEmpty || path.utf8.contains(0) {
                throw HTTPClientError(code: .invalidRequest, message: "TLS option \(name) is empty or contains NUL")
            }
        }
        if self.clientKeyPath != nil, self.clientCertificatePath == nil {
            throw HTTPClientError(
                code: .invalidRequest,
                message: "TLS option clientKeyPath is set without clientCertificatePath"
            )
        }
    }
}
