import CCurl

extension HTTPClientError.Code {
    /// The category of a failed transfer's `CURLcode`.
    static func forCurlCode(_ code: Int) -> Self {
        switch code {
        case Int(CURLE_OPERATION_TIMEDOUT.rawValue):
            .timeout
        case Int(CURLE_COULDNT_CONNECT.rawValue):
            .connectFailed
        case Int(CURLE_COULDNT_RESOLVE_HOST.rawValue), Int(CURLE_COULDNT_RESOLVE_PROXY.rawValue):
            .dnsFailed
        case Int(CURLE_SSL_CONNECT_ERROR.rawValue), Int(CURLE_PEER_FAILED_VERIFICATION.rawValue),
            Int(CURLE_SSL_CERTPROBLEM.rawValue), Int(CURLE_SSL_CIPHER.rawValue),
            Int(CURLE_SSL_CACERT_BADFILE.rawValue), Int(CURLE_SSL_ISSUER_ERROR.rawValue),
            Int(CURLE_SSL_PINNEDPUBKEYNOTMATCH.rawValue), Int(CURLE_SSL_INVALIDCERTSTATUS.rawValue),
            Int(CURLE_SSL_CRL_BADFILE.rawValue), Int(CURLE_SSL_SHUTDOWN_FAILED.rawValue),
            Int(CURLE_SSL_ENGINE_NOTFOUND.rawValue), Int(CURLE_SSL_ENGINE_SETFAILED.rawValue),
            Int(CURLE_SSL_ENGINE_INITFAILED.rawValue), Int(CURLE_SSL_CLIENTCERT.rawValue),
            Int(CURLE_USE_SSL_FAILED.rawValue):
            .tlsFailed
        case Int(CURLE_UNSUPPORTED_PROTOCOL.rawValue):
            .protocolNotAllowed
        case Int(CURLE_URL_MALFORMAT.rawValue):
            .invalidURL
        case Int(CURLE_SEND_ERROR.rawValue), Int(CURLE_SEND_FAIL_REWIND.rawValue):
            .sendFailed
        case Int(CURLE_RECV_ERROR.rawValue), Int(CURLE_GOT_NOTHING.rawValue), Int(CURLE_PARTIAL_FILE.rawValue),
            Int(CURLE_HTTP2.rawValue), Int(CURLE_HTTP2_STREAM.rawValue), Int(CURLE_HTTP3.rawValue),
            Int(CURLE_WEIRD_SERVER_REPLY.rawValue), Int(CURLE_BAD_CONTENT_ENCODING.rawValue):
            .receiveFailed
        case Int(CURLE_TOO_MANY_REDIRECTS.rawValue):
            .tooManyRedirects
        default:
            .other
        }
    }
}

extension HTTPClientError {
    /// An error for a transfer that finished with `code`.
    ///
    /// - Parameter errorBuffer: the text libcurl left in `CURLOPT_ERRORBUFFER`,
    ///   often more specific than `curl_easy_strerror`.
    init(curlCode code: CURLcode, errorBuffer: String) {
        let generic = String(cString: curl_easy_strerror(code))
        let detail = errorBuffer.isEmpty ? generic : errorBuffer
        var category = Code.forCurlCode(Int(code.rawValue))
        if category == .protocolNotAllowed, detail.contains("HTTP/0.9") {
            // The scheme was checked before sending: this is a receiver answering bytes that
            // are not HTTP. A broken answer, worth retrying, not a refused URL.
            category = .receiveFailed
        }
        if category == .receiveFailed || category == .sendFailed, Self.isTLSAlert(detail) {
            // With TLS 1.3 the server judges the client certificate after the
            // client considers the handshake done, so a refusal ("alert
            // certificate required", "alert unknown ca") arrives on the first
            // read or write: still a TLS failure, not a broken connection.
            category = .tlsFailed
        }
        self.init(code: category, message: detail, curlCode: Int(code.rawValue))
    }

    /// Whether libcurl's message reports a TLS alert from the peer (OpenSSL wording).
    static func isTLSAlert(_ message: String) -> Bool {
        message.contains("SSL routines") && message.contains(" alert ")
    }
}

extension Duration {
    /// Whole milliseconds for libcurl's `*_MS` options, rounded up so a
    /// positive duration never becomes 0 (which curl reads as "no limit").
    var curlMilliseconds: Int {
        let (seconds, attoseconds) = self.components
        guard seconds >= 0, attoseconds >= 0 else { return 1 }
        let attosecondsPerMillisecond: Int64 = 1_000_000_000_000_000
        let (wholeSeconds, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return Int(Int32.max) }
        var milliseconds = wholeSeconds + attoseconds / attosecondsPerMillisecond
        if attoseconds % attosecondsPerMillisecond != 0 { milliseconds += 1 }
        return Int(min(max(milliseconds, 1), Int64(Int32.max)))
    }
}
