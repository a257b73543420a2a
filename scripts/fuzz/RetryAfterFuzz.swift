// libFuzzer target for RetryAfter.parse (Sources/ConsentSyncCore/Retry/RetryAfter.swift),
// compiled together with that file by scripts/fuzz/run.sh. A Retry-After header is text a
// receiver controls: parsing it must never trap, and a result is never negative.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func retryAfterFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let now = Date(timeIntervalSince1970: 1_764_403_200)
    if let delay = RetryAfter.parse(text, now: now) {
        precondition(delay >= .zero, "negative delay \(delay) for \(text.debugDescription)")
    }
    return 0
}
