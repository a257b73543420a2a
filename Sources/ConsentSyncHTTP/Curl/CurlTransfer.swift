import CCurl

/// One request on an easy handle, and the buffers its callbacks fill.
///
/// Confined to the multi loop's thread: created, driven and destroyed there.
/// The callbacks receive `self` unretained; the loop keeps the transfer alive
/// in its table for as long as the easy handle is attached to the multi handle.
/// The loop owns the easy handle: it resets it after the transfer (every option,
/// callback and pointer into this object gone) and hands it to the next one.
final class CurlTransfer {
    let pending: PendingRequest
    let easy: UnsafeMutableRawPointer
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var resolveList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let maxResponseBytes: Int
    private let maxResponseHeaderBytes: Int
    private var body: [UInt8] = []
    private var bodyBytesReceived = 0
    private var headerBytesReceived = 0
    private var headerLimitExceeded = false
    private var head = ResponseHeadParser()
    /// Applied to every connection of this transfer; nil when there is no
    /// policy or a proxy makes the onward connection.
    private let addressPolicy: AddressPolicy?
    private let connectOnlyToLoopback: Bool
    private var checks = ConnectionChecks()

    /// What the address checks saw, to explain a failed transfer.
    private struct ConnectionChecks {
        /// Addresses refused when curl was about to open a socket to them.
        var refusedAtConnect: [AddressRefusal] = []
        /// Sockets opened because the address passed.
        var socketsOpened = 0
        /// The connection's address was refused just before the request was
        /// sent on it: a kept-alive connection opened under an older policy.
        var refusedBeforeRequest: AddressRefusal?
        /// An address that could not be read, so was refused.
        var unreadableAddress: String?
        /// Non-loopback addresses the test sandbox refused.
        var sandboxRefused: [IPAddress] = []
    }

    /// Creates the easy handle and sets every option; throws when libcurl
    /// rejects one (an old libcurl without `CURLOPT_PROTOCOLS_STR`, say) so a
    /// request never runs with a protection missing.
    /// `protocols`: the configuration's ``HTTPClient/Configuration/curlProtocols``.
    init(
        pending: PendingRequest, easy: UnsafeMutableRawPointer, configuration: HTTPClient.Configuration, protocols: ContiguousArray<CChar>
    ) throws(HTTPClientError) {
        self.pending = pending
        self.easy = easy
        self.errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        self.errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        self.maxResponseBytes = pending.request.maxResponseBytes
        self.maxResponseHeaderBytes = configuration.maxResponseHeaderBytes
        self.addressPolicy = configuration.proxy == nil ? pending.addressPolicy : nil
        self.connectOnlyToLoopback = configuration.connectOnlyToLoopback
        try self.configure(pending.request, configuration, protocols: protocols)
    }

    deinit {
        curl_slist_free_all(self.headerList)
        curl_slist_free_all(self.resolveList)
        self.errorBuffer.deallocate()
    }

    // MARK: Options

    private func configure(
        _ request: HTTPRequest, _ configuration: HTTPClient.Configuration, protocols: ContiguousArray<CChar>
    ) throws(HTTPClientError) {
        try self.set("ERRORBUFFER", ccurl_easy_setopt_pointer(self.easy, CURLOPT_ERRORBUFFER, self.errorBuffer))
        try self.set("URL", ccurl_easy_setopt_string(self.easy, CURLOPT_URL, request.url))
        try protocols.withUnsafeBufferPointer { protocols throws(HTTPClientError) in
            try self.set("PROTOCOLS_STR", ccurl_easy_setopt_string(self.easy, CURLOPT_PROTOCOLS_STR, protocols.baseAddress))
            try self.set("REDIR_PROTOCOLS_STR", ccurl_easy_setopt_string(self.easy, CURLOPT_REDIR_PROTOCOLS_STR, protocols.baseAddress))
        }
        try self.set("FOLLOWLOCATION", ccurl_easy_setopt_long(self.easy, CURLOPT_FOLLOWLOCATION, 0))
        try self.set("NOSIGNAL", ccurl_easy_setopt_long(self.easy, CURLOPT_NOSIGNAL, 1))
        try self.set("TIMEOUT_MS", ccurl_easy_setopt_long(self.easy, CURLOPT_TIMEOUT_MS, request.timeout.curlMilliseconds))
        try self.set(
            "CONNECTTIMEOUT_MS",
            ccurl_easy_setopt_long(self.easy, CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeout.curlMilliseconds)
        )
        // Explicit values, even "", stop libcurl from reading HTTP(S)_PROXY,
        // ALL_PROXY and NO_PROXY from the environment: a proxy is used only
        // when configured, and then for every request.
        // (Literals where they can be: they reach C as they are, a short Swift string is copied.)
        if let proxy = configuration.proxy {
            try self.set("PROXY", ccurl_easy_setopt_string(self.easy, CURLOPT_PROXY, proxy))
            try self.set("NOPROXY", ccurl_easy_setopt_string(self.easy, CURLOPT_NOPROXY, ""))
        } else {
            try self.set("PROXY", ccurl_easy_setopt_string(self.easy, CURLOPT_PROXY, ""))
            try self.set("NOPROXY", ccurl_easy_setopt_string(self.easy, CURLOPT_NOPROXY, "*"))
        }
        try self.set("USERAGENT", ccurl_easy_setopt_string(self.easy, CURLOPT_USERAGENT, configuration.userAgent))
        try self.configureTLS(request.tls)
        if !request.resolveOverrides.isEmpty {
            try self.appendLines(request.resolveOverrides, to: &self.resolveList)
            try self.set("RESOLVE", ccurl_easy_setopt_slist(self.easy, CURLOPT_RESOLVE, self.resolveList))
        }

        let userdata = Unmanaged.passUnretained(self).toOpaque()
        try self.configureAddressChecks(userdata)
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
                // Any other count than `length` makes libcurl abort with CURLE_WRITE_ERROR.
                return transfer.receiveHeaderLine(UnsafeRawBufferPointer(start: data, count: length)) ? length : 0
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
        // "Name:" with nothing after it removes a header libcurl would add by itself.
        if !headers.contains(where: { $0.name.equalsIgnoringASCIICase("Expect") }) {
            try self.append(static: "Expect:", to: &self.headerList)  // no 100-continue round trip
        }
        if sendsBody, !headers.contains(where: { $0.name.equalsIgnoringASCIICase("Content-Type") }) {
            try self.append(static: "Content-Type:", to: &self.headerList)  // not libcurl's application/x-www-form-urlencoded
        }
        for header in headers {
            try self.append(header, to: &self.headerList)
        }
        try self.set("HTTPHEADER", ccurl_easy_setopt_slist(self.easy, CURLOPT_HTTPHEADER, self.headerList))
    }

    /// Verification is always on, whatever the options; they only choose the
    /// trust store and the client identity. libcurl copies the strings.
    private func configureTLS(_ tls: TLSOptions?) throws(HTTPClientError) {
        try self.set("SSL_VERIFYPEER", ccurl_easy_setopt_long(self.easy, CURLOPT_SSL_VERIFYPEER, 1))
        try self.set("SSL_VERIFYHOST", ccurl_easy_setopt_long(self.easy, CURLOPT_SSL_VERIFYHOST, 2))
        try self.set("PROXY_SSL_VERIFYPEER", ccurl_easy_setopt_long(self.easy, CURLOPT_PROXY_SSL_VERIFYPEER, 1))
        try self.set("PROXY_SSL_VERIFYHOST", ccurl_easy_setopt_long(self.easy, CURLOPT_PROXY_SSL_VERIFYHOST, 2))
        guard let tls else { return }
        if let path = tls.caBundlePath {
            try self.set("CAINFO", ccurl_easy_setopt_string(self.easy, CURLOPT_CAINFO, path))
        }
        if let certificate = tls.clientCertificatePath {
            try self.set("SSLCERT", ccurl_easy_setopt_string(self.easy, CURLOPT_SSLCERT, certificate))
            try self.set("SSLCERTTYPE", ccurl_easy_setopt_string(self.easy, CURLOPT_SSLCERTTYPE, "PEM"))
            try self.set("SSLKEY", ccurl_easy_setopt_string(self.easy, CURLOPT_SSLKEY, tls.clientKeyPath ?? certificate))
            try self.set("SSLKEYTYPE", ccurl_easy_setopt_string(self.easy, CURLOPT_SSLKEYTYPE, "PEM"))
        }
    }

    /// Installs the open-socket check (every new connection, on the address
    /// about to be connected) and the pre-request check (every request, on
    /// the connected address, so also on reused connections).
    private func configureAddressChecks(_ userdata: UnsafeMutableRawPointer) throws(HTTPClientError) {
        if self.addressPolicy != nil || self.connectOnlyToLoopback {
            try self.set("OPENSOCKETDATA", ccurl_easy_setopt_pointer(self.easy, CURLOPT_OPENSOCKETDATA, userdata))
            try self.set(
                "OPENSOCKETFUNCTION",
                ccurl_easy_setopt_opensocket_function(self.easy) { userdata, _, address in
                    guard let userdata, let address else { return CURL_SOCKET_BAD }
                    let transfer = Unmanaged<CurlTransfer>.fromOpaque(userdata).takeUnretainedValue()
                    return transfer.openSocket(address)
                }
            )
        }
        if self.addressPolicy != nil {
            try self.set("PREREQDATA", ccurl_easy_setopt_pointer(self.easy, CURLOPT_PREREQDATA, userdata))
            try self.set(
                "PREREQFUNCTION",
                ccurl_easy_setopt_prereq_function(self.easy) { userdata, primaryIP, _, _, _ in
                    guard let userdata else { return CInt(CURL_PREREQFUNC_ABORT) }
                    let transfer = Unmanaged<CurlTransfer>.fromOpaque(userdata).takeUnretainedValue()
                    return transfer.mayRequest(onConnectionTo: primaryIP) ? CInt(CURL_PREREQFUNC_OK) : CInt(CURL_PREREQFUNC_ABORT)
                }
            )
        }
    }

    private func appendLines(_ lines: [String], to list: inout UnsafeMutablePointer<curl_slist>?) throws(HTTPClientError) {
        for line in lines {
            try self.append(line, to: &list)
        }
    }

    /// Appends `Name: value`, or `Name;` (libcurl's spelling of a header with an empty value),
    /// written as a C string in place: joining them as Swift strings first allocated once more
    /// per header of every request.
    private func append(_ header: HTTPHeader, to list: inout UnsafeMutablePointer<curl_slist>?) throws(HTTPClientError) {
        var name = header.name
        var value = header.value
        let appended = name.withUTF8 { name in
            value.withUTF8 { value in
                let count = name.count + (value.isEmpty ? 1 : 2 + value.count) + 1
                return withUnsafeTemporaryAllocation(of: CChar.self, capacity: count) { line -> UnsafeMutablePointer<curl_slist>? in
                    let bytes = UnsafeMutableRawBufferPointer(line)
                    var offset = 0
                    func put(_ part: UnsafeBufferPointer<UInt8>) {
                        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + part.count]).copyMemory(from: UnsafeRawBufferPointer(part))
                        offset += part.count
                    }
                    put(name)
                    if value.isEmpty {
                        bytes[offset] = UInt8(ascii: ";")
                        offset += 1
                    } else {
                        bytes[offset] = UInt8(ascii: ":")
                        bytes[offset + 1] = UInt8(ascii: " ")
                        offset += 2
                        put(value)
                    }
                    bytes[offset] = 0
                    return curl_slist_append(list, line.baseAddress)  // copies the line
                }
            }
        }
        guard let appended else {
            throw HTTPClientError(code: .other, message: "curl_slist_append failed (out of memory?)")
        }
        list = appended
    }

    private func append(static line: StaticString, to list: inout UnsafeMutablePointer<curl_slist>?) throws(HTTPClientError) {
        let cString = UnsafeRawPointer(line.utf8Start).assumingMemoryBound(to: CChar.self)
        guard let appended = curl_slist_append(list, cString) else {
            throw HTTPClientError(code: .other, message: "curl_slist_append failed (out of memory?)")
        }
        list = appended
    }

    private func append(_ line: String, to list: inout UnsafeMutablePointer<curl_slist>?) throws(HTTPClientError) {
        guard let appended = curl_slist_append(list, line) else {
            throw HTTPClientError(code: .other, message: "curl_slist_append failed (out of memory?)")
        }
        list = appended
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

    /// Returns false to abort once the header lines exceed their limit.
    private func receiveHeaderLine(_ bytes: UnsafeRawBufferPointer) -> Bool {
        self.headerBytesReceived += bytes.count
        guard self.headerBytesReceived <= self.maxResponseHeaderBytes else {
            self.headerLimitExceeded = true
            return false
        }
        self.head.consume(utf8: bytes)
        return true
    }

    /// CURLOPT_OPENSOCKETFUNCTION: opens the socket only when the address passes.
    private func openSocket(_ address: UnsafeMutablePointer<curl_sockaddr>) -> curl_socket_t {
        var bytes = [UInt8](repeating: 0, count: 16)
        let length = ccurl_sockaddr_ip(address, &bytes)
        guard let ip = IPAddress(bytes: bytes.prefix(Int(length))) else {
            self.checks.unreadableAddress = "an address of family \(address.pointee.family)"
            return CURL_SOCKET_BAD
        }
        if let policy = self.addressPolicy, case .refused(let refusal) = policy.verdict(for: ip) {
            self.checks.refusedAtConnect.append(refusal)
            return CURL_SOCKET_BAD  // libcurl fails this attempt with CURLE_COULDNT_CONNECT
        }
        if self.connectOnlyToLoopback, !ip.isLocalLoopback {
            self.checks.sandboxRefused.append(ip)
            return CURL_SOCKET_BAD
        }
        self.checks.socketsOpened += 1
        return ccurl_open_socket(address)
    }

    /// CURLOPT_PREREQFUNCTION: runs before each request, on new and reused
    /// connections alike, with the address the connection goes to.
    private func mayRequest(onConnectionTo primaryIP: UnsafeMutablePointer<CChar>?) -> Bool {
        guard let policy = self.addressPolicy else { return true }
        guard let primaryIP, let ip = IPAddress(cString: primaryIP) else {
            self.checks.unreadableAddress = "'\(primaryIP.map { String(cString: $0) } ?? "")'"
            return false
        }
        if case .refused(let refusal) = policy.verdict(for: ip) {
            self.checks.refusedBeforeRequest = refusal
            return false  // libcurl fails with CURLE_ABORTED_BY_CALLBACK
        }
        return true
    }

    // MARK: Result

    /// The outcome once libcurl reported the transfer done with `code`.
    func result(for code: CURLcode) -> Result<HTTPResponse, HTTPClientError> {
        guard code == CURLE_OK else {
            return .failure(self.error(for: code))
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

    private func error(for code: CURLcode) -> HTTPClientError {
        let curlCode = Int(code.rawValue)
        if let refusal = self.checks.refusedBeforeRequest {
            return HTTPClientError(
                code: .addressBlocked,
                message: "refused to send on a connection to \(refusal.address): \(refusal)",
                curlCode: curlCode,
                refusal: refusal
            )
        }
        if let refusal = self.checks.refusedAtConnect.first, self.checks.socketsOpened == 0, self.checks.sandboxRefused.isEmpty {
            let others = Set(self.checks.refusedAtConnect.map(\.address)).count - 1
            let more = others > 0 ? " (and \(others) more refused address\(others == 1 ? "" : "es"))" : ""
            return HTTPClientError(
                code: .addressBlocked,
                message: "refused to connect: \(refusal)\(more)",
                curlCode: curlCode,
                refusal: refusal
            )
        }
        if let unreadable = self.checks.unreadableAddress {
            return HTTPClientError(
                code: .addressBlocked,
                message: "refused to connect to \(unreadable): not an IPv4 or IPv6 address",
                curlCode: curlCode
            )
        }
        if !self.checks.sandboxRefused.isEmpty {
            return HTTPClientError(
                code: .connectFailed,
                message: "test sandbox: refused to connect to non-loopback \(self.checks.sandboxRefused.map(\.description).joined(separator: ", "))",
                curlCode: curlCode,
                isRetryable: false
            )
        }
        if self.headerLimitExceeded {
            return HTTPClientError(
                code: .receiveFailed,
                message: "the response headers exceed the limit of \(self.maxResponseHeaderBytes) bytes; transfer aborted",
                curlCode: curlCode
            )
        }
        return HTTPClientError(curlCode: code, errorBuffer: String(cString: self.errorBuffer))
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
