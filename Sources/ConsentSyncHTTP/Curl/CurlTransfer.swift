import CCurl

/// One easy handle and the buffers its callbacks fill.
///
/// Confined to the multi loop's thread: created, driven and destroyed there.
/// The callbacks receive `self` unretained; the loop keeps the transfer alive
/// in its table for as long as the easy handle is attached to the multi handle.
final class CurlTransfer {
    let pending: PendingRequest
    let easy: UnsafeMutableRawPointer
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let addressBlocked: UnsafeMutablePointer<CInt>
    private let maxResponseBytes: Int
    private var body: [UInt8] = []
    private var bodyBytesReceived = 0
    private var head = ResponseHeadParser()

    /// Creates the easy handle and sets every option; throws when libcurl
    /// rejects one (an old libcurl without `CURLOPT_PROTOCOLS_STR`, say) so a
    /// request never runs with a protection missing.
    init(pending: PendingRequest, configuration: HTTPClient.Configuration) throws(HTTPClientError) {
        guard let easy = curl_easy_init() else {
            throw HTTPClientError(code: .other, message: "curl_easy_init failed (out of memory?)")
        }
        self.pending = pending
        self.easy = easy
        self.errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        self.errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        self.addressBlocked = .allocate(capacity: 1)
        self.addressBlocked.initialize(to: 0)
        self.maxResponseBytes = pending.request.maxResponseBytes
        self.body.reserveCapacity(min(self.maxResponseBytes, 64 * 1024))
        try self.configure(pending.request, configuration)
    }

    deinit {
        curl_easy_cleanup(self.easy)
        curl_slist_free_all(self.headerList)
        self.errorBuffer.deallocate()
        self.addressBlocked.deallocate()
    }

    // MARK: Options

    private func configure(_ request: HTTPRequest, _ configuration: HTTPClient.Configuration) throws(HTTPClientError) {
        try self.set("ERRORBUFFER", ccurl_easy_setopt_pointer(self.easy, CURLOPT_ERRORBUFFER, self.errorBuffer))
        try self.set("URL", ccurl_easy_setopt_string(self.easy, CURLOPT_URL, request.url))
        try self.set("PROTOCOLS_STR", ccurl_easy_setopt_string(self.easy, CURLOPT_PROTOCOLS_STR, "http,https"))
        try self.set("REDIR_PROTOCOLS_STR", ccurl_easy_setopt_string(self.easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"))
        try self.set("FOLLOWLOCATION", ccurl_easy_setopt_long(self.easy, CURLOPT_FOLLOWLOCATION, 0))
        try self.set("NOSIGNAL", ccurl_easy_setopt_long(self.easy, CURLOPT_NOSIGNAL, 1))
        try self.set("TIMEOUT_MS", ccurl_easy_setopt_long(self.easy, CURLOPT_TIMEOUT_MS, request.timeout.curlMilliseconds))
        try self.set(
            "CONNECTTIMEOUT_MS",
            ccurl_easy_setopt_long(self.easy, CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeout.curlMilliseconds)
        )
        // An explicit value, even "", stops libcurl from reading HTTP(S)_PROXY from the environment.
        try self.set("PROXY", ccurl_easy_setopt_string(self.easy, CURLOPT_PROXY, configuration.proxy ?? ""))
        try self.set("USERAGENT", ccurl_easy_setopt_string(self.easy, CURLOPT_USERAGENT, configuration.userAgent))
        if configuration.blockPrivateAddresses && configuration.proxy == nil {
            try self.set("OPENSOCKETFUNCTION", ccurl_easy_set_address_guard(self.easy, self.addressBlocked))
        }

        let userdata = Unmanaged.passUnretained(self).toOpaque()
        try self.set("WRITEDATA", ccurl_easy_setopt_pointer(self.easy, CURLOPT_WRITEDATA, userdata))
        try self.set(
            "WRITEFUNCTION",
            ccurl_easy_setopt_write_function(self.easy) { data, size, count, userdata in
                let transfer = Unmanaged<CurlTransfer>.fromOpaque(userdata!).takeUnretainedValue()
                let length = size * count
                transfer.receiveBody(UnsafeRawBufferPointer(start: data, count: length))
                return length
            }
        )
        try self.set("HEADERDATA", ccurl_easy_setopt_pointer(self.easy, CURLOPT_HEADERDATA, userdata))
        try self.set(
            "HEADERFUNCTION",
            ccurl_easy_setopt_header_function(self.easy) { data, size, count, userdata in
                let transfer = Unmanaged<CurlTransfer>.fromOpaque(userdata!).takeUnretainedValue()
                let length = size * count
                transfer.receiveHeaderLine(UnsafeRawBufferPointer(start: data, count: length))
                return length
            }
        )

        let sendsBody = try self.configureMethodAndBody(request)
        try self.configureHeaders(request.headers, sendsBody: sendsBody)
    }

    /// Returns whether a body (possibly empty) is sent.
    private func configureMethodAndBody(_ request: HTTPRequest) throws(HTTPClientError) -> Bool {
        switch request.method {
        case "GET" where request.body.isEmpty:
            try self.set("HTTPGET", ccurl_easy_setopt_long(self.easy, CURLOPT_HTTPGET, 1))
            return false
        case "HEAD":
            // A HEAD response has no body, which libcurl only knows through NOBODY.
            try self.set("NOBODY", ccurl_easy_setopt_long(self.easy, CURLOPT_NOBODY, 1))
            return false
        default:
            // The size goes first so COPYPOSTFIELDS copies exactly that many
            // bytes, NULs included, instead of calling strlen.
            try self.set(
                "POSTFIELDSIZE_LARGE",
                ccurl_easy_setopt_off_t(self.easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
            )
            let code = request.body.withUnsafeBytes { bytes -> CURLcode in
                // An empty array may have no storage; curl still wants a valid pointer.
                var empty: UInt8 = 0
                guard let base = bytes.baseAddress else {
                    return ccurl_easy_setopt_pointer(self.easy, CURLOPT_COPYPOSTFIELDS, &empty)
                }
                return ccurl_easy_setopt_pointer(self.easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: base))
            }
            try self.set("COPYPOSTFIELDS", code)
            if request.method != "POST" {
                try self.set("CUSTOMREQUEST", ccurl_easy_setopt_string(self.easy, CURLOPT_CUSTOMREQUEST, request.method))
            }
            return true
        }
    }

    private func configureHeaders(_ headers: [HTTPHeader], sendsBody: Bool) throws(HTTPClientError) {
        var lines: [String] = []
        // "Name:" with nothing after it removes a header libcurl would add by itself.
        if !headers.contains(where: { $0.name.equalsIgnoringASCIICase("Expect") }) {
            lines.append("Expect:")  // no 100-continue round trip
        }
        if sendsBody, !headers.contains(where: { $0.name.equalsIgnoringASCIICase("Content-Type") }) {
            lines.append("Content-Type:")  // not libcurl's application/x-www-form-urlencoded
        }
        for header in headers {
            // "Name;" is libcurl's spelling of a header with an empty value.
            lines.append(header.value.isEmpty ? "\(header.name);" : "\(header.name): \(header.value)")
        }
        for line in lines {
            guard let list = curl_slist_append(self.headerList, line) else {
                throw HTTPClientError(code: .other, message: "curl_slist_append failed (out of memory?)")
            }
            self.headerList = list
        }
        try self.set("HTTPHEADER", ccurl_easy_setopt_slist(self.easy, CURLOPT_HTTPHEADER, self.headerList))
    }

    private func set(_ option: String, _ code: CURLcode) throws(HTTPClientError) {
        guard code != CURLE_OK else { return }
        throw HTTPClientError(
            code: .other,
            message: "libcurl rejected CURLOPT_\(option): \(String(cString: curl_easy_strerror(code)))",
            curlCode: Int(code.rawValue),
            isRetryable: false
        )
    }

    // MARK: Callbacks

    private func receiveBody(_ bytes: UnsafeRawBufferPointer) {
        let room = self.maxResponseBytes - self.body.count
        if room > 0 {
            self.body.append(contentsOf: bytes.prefix(room))
        }
        self.bodyBytesReceived += bytes.count
    }

    private func receiveHeaderLine(_ bytes: UnsafeRawBufferPointer) {
        self.head.consume(Substring(String(decoding: bytes, as: UTF8.self)))
    }

    // MARK: Result

    /// The outcome once libcurl reported the transfer done with `code`.
    func result(for code: CURLcode) -> Result<HTTPResponse, HTTPClientError> {
        guard code == CURLE_OK else {
            let message = String(cString: self.errorBuffer)
            return .failure(HTTPClientError(curlCode: code, errorBuffer: message, addressBlocked: self.addressBlocked.pointee != 0))
        }
        let status = self.long(CURLINFO_RESPONSE_CODE)
        let connects = self.long(CURLINFO_NUM_CONNECTS)
        var microseconds: curl_off_t = 0
        _ = ccurl_easy_getinfo_off_t(self.easy, CURLINFO_TOTAL_TIME_T, &microseconds)
        return .success(
            HTTPResponse(
                status: status,
                headers: self.head.headers,
                body: self.body,
                bodyTruncated: self.bodyBytesReceived > self.body.count,
                duration: .microseconds(microseconds),
                httpVersion: Self.versionName(self.long(CURLINFO_HTTP_VERSION)),
                newConnections: connects
            )
        )
    }

    private func long(_ info: CURLINFO) -> Int {
        var value = 0
        _ = ccurl_easy_getinfo_long(self.easy, info, &value)
        return value
    }

    private static func versionName(_ version: Int) -> String {
        switch version {
        case CURL_HTTP_VERSION_1_0: "1.0"
        case CURL_HTTP_VERSION_1_1: "1.1"
        case CURL_HTTP_VERSION_2_0: "2"
        case CURL_HTTP_VERSION_3: "3"
        default: "unknown"
        }
    }
}
