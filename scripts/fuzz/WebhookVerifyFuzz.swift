// libFuzzer target for WebhookSigner.verify (Sources/ConsentSyncCore/Signing), compiled with
// the signing sources and swift-crypto's objects by scripts/fuzz/run.sh. The headers and body
// come from whoever calls the reference receiver: verify must never trap, must refuse whatever
// is not signed with the secret, and must accept what is.
import Foundation

private let secret = try! SigningSecret(parsing: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
private let now = Date(timeIntervalSince1970: 1_764_403_200)

@_cdecl("LLVMFuzzerTestOneInput")
public func webhookVerifyFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // Split the input into id, timestamp, signature header and body at the first three NULs.
    var fields: [[UInt8]] = [[]]
    for byte in bytes {
        if byte == 0 && fields.count < 4 { fields.append([]) } else { fields[fields.count - 1].append(byte) }
    }
    while fields.count < 4 { fields.append([]) }
    let id = String(decoding: fields[0], as: UTF8.self)
    let timestamp = String(decoding: fields[1], as: UTF8.self)
    let header = String(decoding: fields[2], as: UTF8.self)
    let body = fields[3]

    // Arbitrary input: refused (it cannot carry a valid HMAC), never a trap.
    do {
        try WebhookSigner.verify(id: id, timestamp: timestamp, signatureHeader: header, body: body, secrets: [secret], now: now)
        preconditionFailure("accepted an unsigned message: id \(id.debugDescription) header \(header.debugDescription)")
    } catch {}

    // The same message signed properly: accepted, also among other (garbage) signatures.
    if !id.isEmpty, let seconds = Int64(timestamp), abs(seconds - 1_764_403_200) <= 300 {
        let signed = WebhookSigner.signature(id: id, timestamp: seconds, body: body, secrets: [secret]) + " " + header
        do {
            try WebhookSigner.verify(id: id, timestamp: timestamp, signatureHeader: signed, body: body, secrets: [secret], now: now)
        } catch {
            preconditionFailure("refused a signed message (\(error)): id \(id.debugDescription) timestamp \(timestamp.debugDescription)")
        }
    }
    return 0
}
