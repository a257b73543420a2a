import CCurl

/// The parts of a URL the policies need, as libcurl's URL parser (`CURLU`)
/// reads them, so the checks see exactly what the transfer will.
struct CurlURL {
    /// A host name, a normalised IPv4 address, or an IPv6 address without brackets.
    let host: String
    /// Explicit, or the scheme's default.
    let port: Int
    let literalAddress: IPAddress?

    init(_ url: String) throws(HTTPClientError) {
        guard let handle = curl_url() else {
            throw HTTPClientError(code: .other, message: "curl_url failed (out of memory?)")
        }
        defer { curl_url_cleanup(handle) }
        let setCode = curl_url_set(handle, CURLUPART_URL, url, 0)
        guard setCode == CURLUE_OK else {
            throw HTTPClientError(
                code: .invalidURL,
                message: "the URL cannot be parsed: \(String(cString: curl_url_strerror(setCode)))"
            )
        }
        guard var host = Self.part(handle, CURLUPART_HOST, flags: 0), !host.isEmpty else {
            throw HTTPClientError(code: .invalidURL, message: "the URL has no host")
        }
        let portText = Self.part(handle, CURLUPART_PORT, flags: UInt32(CURLU_DEFAULT_PORT)) ?? ""
        guard let port = Int(portText) else {
            throw HTTPClientError(code: .invalidURL, message: "the URL has no usable port")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard let address = IPAddress(host) else {
                throw HTTPClientError(code: .invalidURL, message: "the URL's IPv6 host is not an IPv6 address")
            }
            self.literalAddress = address
        } else {
            self.literalAddress = IPAddress(host)
        }
        self.host = host
        self.port = port
    }

    private static func part(_ handle: OpaquePointer, _ part: CURLUPart, flags: UInt32) -> String? {
        var value: UnsafeMutablePointer<CChar>?
        guard curl_url_get(handle, part, &value, flags) == CURLUE_OK, let value else { return nil }
        defer { curl_free(value) }
        return String(cString: value)
    }
}
