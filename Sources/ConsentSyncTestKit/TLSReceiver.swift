import Foundation

/// Certificates for TLS tests, made with the `openssl` command in a
/// temporary directory: a CA, a server certificate for localhost and
/// 127.0.0.1, two client certificates it signed ("client-a", "client-b"), and a
/// rogue CA with a client certificate of its own ("rogue").
public struct TestCertificates: Sendable {
    public let directory: URL

    public static func make() async throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("consent-sync-tls-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = #"""
            set -e
            cd "$1"
            ca() {
              openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
                -keyout "$1.key" -out "$1.pem" -subj "/CN=$2" \
                -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
            }
            issue() {
              openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
              printf '%s\n' "basicConstraints=critical,CA:FALSE" "$3" > "$1.ext"
              openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
                -extfile "$1.ext" -out "$1.pem"
            }
            ca ca "consent-sync test CA"
            ca rogue-ca "rogue test CA"
            issue server ca "subjectAltName=DNS:localhost,IP:127.0.0.1
            extendedKeyUsage=serverAuth"
            issue client-a ca "extendedKeyUsage=clientAuth"
            issue client-b ca "extendedKeyUsage=clientAuth"
            issue rogue rogue-ca "extendedKeyUsage=clientAuth"
            """#
        let openssl = try await HelperProgram.run("/bin/sh", ["-c", script, "sh", directory.path], timeout: .seconds(60))
        guard openssl.status == 0 else {
            try? FileManager.default.removeItem(at: directory)
            throw TLSFixtureError(message: "openssl failed: \(openssl.errors)")
        }
        return TestCertificates(directory: directory)
    }

    /// The path of `name` ("ca.pem", "client-a.key", …).
    public func path(_ name: String) -> String {
        self.directory.appendingPathComponent(name).path
    }

    public func remove() {
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// An HTTPS server on 127.0.0.1 requiring a client certificate signed by the
/// test CA (Python's `http.server` and `ssl`, in a child process). Answers
/// every POST with 200 and the client certificate's common name as the body;
/// keeps connections alive, so reuse is possible.
public final class TLSReceiver: Sendable {
    public let port: Int
    private let process: Process
    private let input: Pipe

    private static let script = #"""
        import http.server, os, socket, ssl, sys, threading, time
        directory = sys.argv[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.path.join(directory, "server.pem"), os.path.join(directory, "server.key"))
        context.load_verify_locations(os.path.join(directory, "ca.pem"))
        context.verify_mode = ssl.CERT_REQUIRED

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def setup(self):
                try:
                    self.request.do_handshake()
                except Exception:
                    # The TLS alert is sent. Closing now, with bytes from the client still
                    # unread (with TLS 1.3 the client may already have sent its request, as it
                    # learns of a refused certificate only after its side of the handshake),
                    # would send a reset that can overtake the alert. So: end our side, and
                    # read until the client closes its side (at most 10 s).
                    try:
                        self.request.shutdown(socket.SHUT_WR)
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline:
                            self.request.settimeout(max(0.01, deadline - time.monotonic()))
                            if not self.request.recv(65536):
                                break
                    except OSError:
                        pass
                    raise
                super().setup()
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                certificate = self.connection.getpeercert() or {}
                names = dict(field[0] for field in certificate.get("subject", ()))
                body = names.get("commonName", "").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *arguments):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            def get_request(self):
                connection, address = self.socket.accept()
                return context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address
            def handle_error(self, request, address):
                pass

        server = Server(("127.0.0.1", 0), Handler)
        # Exit with the test process: it holds our stdin open.
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#

    private init(port: Int, process: Process, input: Pipe) {
        self.port = port
        self.process = process
        self.input = input
    }

    /// Starts the server and waits (on a thread of its own, not the cooperative pool) until it
    /// says its port.
    public static func start(certificates: TestCertificates, timeout: Duration = .seconds(60)) async throws -> TLSReceiver {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script, certificates.directory.path]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Should the server hang before printing its port, end it: the read below then ends too.
        let answered = LockedBox(false)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(timeout / .milliseconds(1)))) {
            if !answered.withLock({ $0 }) { process.terminate() }
        }
        let line = try await HelperProgram.onOwnThread {
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }  // the server exited
                line.append(chunk)
            }
            answered.withLock { $0 = true }
            return line
        }
        guard let port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            await end(process, input: input)
            throw TLSFixtureError(message: "the Python TLS receiver did not start")
        }
        return TLSReceiver(port: port, process: process, input: input)
    }

    /// "https://127.0.0.1:<port>/hook"
    public var url: String { "https://127.0.0.1:\(self.port)/hook" }

    /// Ends the server and waits for it to exit (on a thread of its own).
    public func stop() async {
        await Self.end(self.process, input: self.input)
    }

    private static func end(_ process: Process, input: Pipe) async {
        try? input.fileHandleForWriting.close()
        guard process.isRunning else { return }
        process.terminate()
        _ = try? await HelperProgram.onOwnThread { process.waitUntilExit() }
    }

    deinit {
        // Normally stopped already; never wait here.
        try? self.input.fileHandleForWriting.close()
        if self.process.isRunning { self.process.terminate() }
    }
}

public struct TLSFixtureError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}

/// Runs `body` with fresh certificates and a receiver requiring client certificates, cleaning up whatever happens.
public func withTLSReceiver<T>(_ body: (TLSReceiver, TestCertificates) async throws -> T) async throws -> T {
    let certificates = try await TestCertificates.make()
    defer { certificates.remove() }
    let receiver = try await TLSReceiver.start(certificates: certificates)
    do {
        let result = try await body(receiver, certificates)
        await receiver.stop()
        return result
    } catch {
        await receiver.stop()
        throw error
    }
}
