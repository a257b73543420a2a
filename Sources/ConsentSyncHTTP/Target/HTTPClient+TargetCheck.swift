extension HTTPClient.Configuration {
    /// Whether a request to `url` would be refused by this configuration, and
    /// why, for checking a webhook URL when it is registered.
    ///
    /// Parses `url` with libcurl's own parser (the one the transfer uses),
    /// checks the scheme against ``allowedSchemes``, and, when there is an
    /// ``addressPolicy``, checks the host: a literal address directly, a host
    /// name by resolving it (`getaddrinfo`, on a thread of its own) and
    /// checking every address. With a ``proxy``, host names are not resolved:
    /// the proxy resolves them, as it would when sending.
    ///
    /// The send-time checks remain the real guard (DNS may answer differently
    /// later); this only tells the operator early.
    ///
    /// - Throws: ``HTTPClientError`` with `.invalidURL`, `.protocolNotAllowed`,
    ///   `.addressBlocked` (naming the address and rule), or `.dnsFailed` when
    ///   the name does not resolve from here (the caller may accept that).
    public func check(url: String) async throws(HTTPClientError) -> HTTPTarget {
        var target = try self.checkWithoutResolving(url: url)
        guard let policy = self.addressPolicy, self.proxy == nil, target.literalAddress == nil else {
            return target
        }
        let addresses = try await HostResolver.resolve(target.host, port: target.port)
        for address in addresses {
            if case .refused(let refusal) = policy.verdict(for: address) {
                throw HTTPClientError(
                    code: .addressBlocked,
                    message: "\(target.host) resolves to a refused address: \(refusal)",
                    refusal: refusal
                )
            }
        }
        target.resolvedAddresses = addresses
        return target
    }

    /// The pure part of ``check(url:)``: syntax, scheme and a literal address;
    /// host names are not resolved.
    public func checkWithoutResolving(url: String) throws(HTTPClientError) -> HTTPTarget {
        if url.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F }) {
            throw HTTPClientError(code: .invalidURL, message: "the URL contains whitespace or control characters")
        }
        guard let scheme = HTTPRequest.scheme(of: url) else {
            throw HTTPClientError(code: .invalidURL, message: "the URL has no scheme; use https://")
        }
        try self.checkScheme(scheme)
        let parsed = try CurlURL(url)
        let target = HTTPTarget(
            scheme: scheme,
            host: parsed.host,
            port: parsed.port,
            literalAddress: parsed.literalAddress
        )
        if let policy = self.addressPolicy, let address = parsed.literalAddress {
            try Self.check(address, against: policy)
        }
        return target
    }

    /// Refuses `scheme` (lowercase) unless it is allowed.
    func checkScheme(_ scheme: String) throws(HTTPClientError) {
        guard scheme == "http" || scheme == "https" else {
            throw HTTPClientError(
                code: .protocolNotAllowed,
                message: "scheme '\(scheme)' is not allowed; only http and https can be"
            )
        }
        guard self.allowedSchemes.contains(scheme) else {
            throw HTTPClientError(
                code: .protocolNotAllowed,
                message: "scheme '\(scheme)' is not allowed (allowed: \(self.allowedSchemesText)); allow it with \(self.allowedSchemesSetting)"
            )
        }
    }

    /// Throws `.addressBlocked` when `policy` refuses `address`.
    static func check(_ address: IPAddress, against policy: AddressPolicy) throws(HTTPClientError) {
        do {
            try policy.check(address)
        } catch {
            throw HTTPClientError(code: .addressBlocked, message: error.description, refusal: error)
        }
    }
}
