import ArgumentParser
import ConsentSyncCore
import Foundation
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// A reference webhook receiver: what a downstream team needs to consume consent-sync,
/// and what the demo uses. It verifies the Standard Webhooks signature and timestamp,
/// parses the CloudEvent, drops duplicates by `webhook-id`, and prints one JSON line per event.
struct ReceiveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Run a reference webhook receiver that verifies signatures and prints each event."
    )

    @Option(help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free one; the port is printed on stderr).")
    var port: Int

    @Option(help: "File holding the subscriber's signing secret (whsec_...). Several lines: any of them may match.")
    var secretFile: String

    @Option(help: "Label printed with each event.")
    var name: String = "receiver"

    @Option(help: "Largest timestamp skew accepted, in seconds.")
    var toleranceSeconds: Int = 300

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 (any free port) and 65535") }
        guard toleranceSeconds > 0 else { throw ValidationError("--tolerance-seconds must be positive") }
    }

    func run() async throws {
        guard let data = FileManager.default.contents(atPath: secretFile) else {
            throw ValidationError("cannot read --secret-file \(secretFile)")
        }
        let secrets: [SigningSecret]
        do {
            secrets = try String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).map { try SigningSecret(parsing: String($0)) }
        } catch {
            throw ValidationError("\(secretFile): \(error)")
        }
        guard !secrets.isEmpty else { throw ValidationError("\(secretFile) holds no secret") }

        var logger = Logger(label: "consent-sync.receive")
        logger.logLevel = .warning
        let seen = Mutex(RecentIDs(capacity: 100_000))
        let label = name
        let tolerance = Duration.seconds(toleranceSeconds)

        let router = Router()
        let handle: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
            let buffer = try await request.body.collect(upTo: 1 << 20)
            let body = Array(buffer.readableBytesView)
            let headers = request.headers
            let id = headers[.init("webhook-id")!]
            do {
                try WebhookSigner.verify(
                    id: id,
                    timestamp: headers[.init("webhook-timestamp")!],
                    signatureHeader: headers[.init("webhook-signature")!],
                    body: body,
                    secrets: secrets,
                    tolerance: tolerance
                )
            } catch {
                Self.printLine(["receiver": label, "rejected": "\(error)"])
                return Response(status: .unauthorized, body: .init(byteBuffer: ByteBuffer(string: #"{"error":"\#(error)"}"#)))
            }
            guard let event = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
                  event["specversion"] as? String == "1.0", let type = event["type"] as? String
            else {
                Self.printLine(["receiver": label, "rejected": "body is not a CloudEvents 1.0 JSON event"])
                return Response(status: .badRequest)
            }
            let fresh = seen.withLock { $0.insert(id ?? "") }
            let data = event["data"] as? [String: Any] ?? [:]
            Self.printLine([
                "receiver": label,
                "webhook_id": id ?? "",
                "type": type,
                "subject": event["subject"] as? String ?? "",
                "purpose": data["purpose"] as? String ?? "",
                "status": data["status"] as? String ?? "",
                "sequence": event["sequence"] as? String ?? "",
                "duplicate": fresh ? "false" : "true",
            ])
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: #"{"applied":true}"#))
            )
        }
        // "**" matches every path below the root but not the root itself, which a subscriber's
        // URL such as http://127.0.0.1:9000/ names: without this it answered 404, and the
        // relay takes a 404 as final (the delivery is dead).
        router.post("/", use: handle)
        router.post("**", use: handle)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "consent-sync-receive"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                FileHandle.standardError.write(Data("consent-sync receive: listening on \(host):\(bound)\n".utf8))
            },
            logger: logger
        )
        try await app.runService()
    }

    static func printLine(_ fields: [String: String]) {
        let data = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data()
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}

/// The last `capacity` webhook ids, to drop redeliveries.
struct RecentIDs {
    let capacity: Int
    private var set = Set<String>()
    private var order: [String] = []
    private var head = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// - Returns: false when the id was seen already.
    mutating func insert(_ id: String) -> Bool {
        guard !set.contains(id) else { return false }
        set.insert(id)
        if order.count < capacity {
            order.append(id)
        } else {
            set.remove(order[head])
            order[head] = id
            head = (head + 1) % capacity
        }
        return true
    }
}
