/// Reads the output of the `pgoutput` plugin (protocol version 1, with `messages`) as the
/// capture reader needs it: per committed transaction, its end, its commit time and the
/// contents of its logical decoding messages with the prefix `consent_sync`. Everything else
/// (relations, other prefixes, origins, types) is skipped.
struct PgOutputReader {
    struct Transaction: Equatable {
        /// Where the transaction's commit record ends: the slot may move here once it is queued.
        var end: UInt64
        /// Microseconds since 2000-01-01 UTC.
        var commitTime: Int64
        var payloads: [String]
    }

    static let prefix = Array("consent_sync".utf8)

    private var open: (commitTime: Int64, payloads: [String])?

    /// Takes the next messages, in order; returns the transactions they complete.
    mutating func feed(_ messages: [[UInt8]]) -> [Transaction] {
        var done: [Transaction] = []
        for message in messages {
            guard let kind = message.first else { continue }
            switch kind {
            case UInt8(ascii: "B") where message.count >= 21:
                open = (Int64(bitPattern: Self.uint64(message, at: 9)), [])
            case UInt8(ascii: "M") where message.count >= 11:
                // flags, LSN, prefix (NUL-ended), length, content
                guard message[1] & 1 == 1, open != nil,
                      let nul = message[10...].firstIndex(of: 0), Array(message[10..<nul]) == Self.prefix,
                      message.count >= nul + 5 else { continue }
                let length = Int(Self.uint32(message, at: nul + 1))
                let start = nul + 5
                guard message.count >= start + length else { continue }
                open?.payloads.append(String(decoding: message[start..<(start + length)], as: UTF8.self))
            case UInt8(ascii: "C") where message.count >= 26:
                if let transaction = open {
                    done.append(Transaction(end: Self.uint64(message, at: 10), commitTime: transaction.commitTime, payloads: transaction.payloads))
                }
                open = nil
            default:
                continue
            }
        }
        return done
    }

    static func uint64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        bytes[offset..<(offset + 8)].reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func uint32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | UInt32($1) }
    }
}
