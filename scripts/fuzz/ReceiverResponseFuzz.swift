// libFuzzer target for what the daemon makes of a receiver's answer, compiled by
// scripts/fuzz/run.sh with Sources/ConsentSyncHTTP/Curl/ResponseHeadParser.swift,
// HTTPHeader.swift, HTTPResponse.swift and Sources/ConsentSyncCore/Retry/*.swift. Every byte of
// an answer is the receiver's to choose: the head lines as libcurl hands them over (interim
// responses, obs-folds, trailers), the status, `Retry-After`, and the body kept as the
// attempt's excerpt. The relay's steps (Relay.swift, `attempt`) are repeated here: parse the
// head, read `retry-after`, decode the excerpt, classify and decide. None may trap, and the
// decision must follow the status class and stay within the policy's bounds.
import Foundation

private struct FixedGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state
    }
}

private let policy = RetryPolicy(
    backoff: Backoff(initial: .milliseconds(50), maximum: .seconds(60), minimum: .milliseconds(10)),
    maxAttempts: 20,
    maxAge: .seconds(3 * 24 * 3600),
    maxRetryAfter: .seconds(3600)
)

/// A header's name ends at the line's first colon byte (this found the parser splitting on
/// `Character`s, where a prepend mark such as U+0604 glued itself to the colon; fixed).
private let strict = true

@_cdecl("LLVMFuzzerTestOneInput")
public func receiverResponseFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 3 else { return 0 }
    // Byte 0-1: the status (0...999, as libcurl may report any three digits); byte 2: the attempt.
    let status = Int(UInt16(bytes[0]) << 8 | UInt16(bytes[1])) % 1000
    let attempt = Int(bytes[2] % 32) + 1
    // Then the head, up to the first NUL, in lines as libcurl's header callback passes them
    // (each with its line end); after the NUL, the body.
    let rest = bytes[3...]
    let split = rest.firstIndex(of: 0) ?? rest.endIndex
    let head = rest[..<split]
    let body = Array(rest[split...].dropFirst())

    var parser = ResponseHeadParser()
    var lineStart = head.startIndex
    for index in head.indices where head[index] == UInt8(ascii: "\n") {
        parser.consume(Substring(String(decoding: head[lineStart...index], as: UTF8.self)))
        lineStart = index + 1
    }
    if lineStart < head.endIndex {
        parser.consume(Substring(String(decoding: head[lineStart...], as: UTF8.self)))
    }
    for header in parser.headers {
        precondition(!header.name.contains("\n") && !header.value.contains("\n"), "a line end inside a header: \(header.name.debugDescription)")
        if strict {
            precondition(!header.name.unicodeScalars.contains(":"), "a colon inside a header name: \(header.name.debugDescription)")
        }
    }

    let response = HTTPResponse(status: status, headers: parser.headers, body: body)
    let excerpt = String(decoding: response.body, as: UTF8.self)
    precondition(excerpt.utf8.count <= body.count * 3, "excerpt grew past its replacement bound")
    // The receiver's verdict for the receipt: any body, never a trap, the reason bounded.
    if let answer = ReceiverAnswer.parse(body) {
        precondition((answer.reason?.count ?? 0) <= ReceiverAnswer.maxReasonLength, "reason longer than its bound")
    }
    let retryAfter = response.header("retry-after")
    if let retryAfter, let delay = RetryAfter.parse(retryAfter) {
        precondition(delay >= .zero, "negative Retry-After \(delay) for \(retryAfter.debugDescription)")
    }

    var generator = FixedGenerator(state: UInt64(size))
    let decision = policy.decide(.response(status: status, retryAfter: retryAfter), attempt: attempt, age: .seconds(Int(bytes[2])), using: &generator)
    switch (StatusClass(status: status), decision) {
    case (.success, .delivered), (.permanent, .dead), (.retryable, .dead):
        break
    case (.retryable, .retry(let after)):
        precondition(after >= .zero, "negative wait \(after)")
        precondition(after <= max(policy.backoff.maximum, policy.maxRetryAfter), "wait \(after) past every bound")
    default:
        preconditionFailure("status \(status) decided \(decision)")
    }
    return 0
}
