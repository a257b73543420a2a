// libFuzzer target for the configuration's outside input, compiled by scripts/fuzz/run.sh with
// Sources/consent-sync/Config{Document,Loader,Schema,ConnectionString,ListenAddress}.swift and
// ConfigurationError.swift, linked with Yams, swift-system and ConsentSyncCore from a debug
// build. The input is a config file and a `CONSENT_SYNC_*` value (split at the first NUL; the
// value's first byte picks the variable). Every key is read through each typed reader, as
// `check-config` and `run` do. Nothing may trap; a redacted connection string, taken apart
// again, holds only `********` as passwords; a listen address that parses prints as one that
// parses back to itself.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func configFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let split = bytes.firstIndex(of: 0) ?? bytes.endIndex
    let fileText = String(decoding: bytes[..<split], as: UTF8.self)
    let variable = Array(bytes[split...].dropFirst())
    var environment: [String: String] = [:]
    if let selector = variable.first {
        let names = ConfigSchema.keys.map(ConfigSchema.environmentVariable(for:)) + ["CONSENT_SYNC_BOGUS_PASSWORD", "CONSENT_SYNC_LOG_LEVL"]
        environment[names[Int(selector) % names.count]] = String(decoding: variable.dropFirst(), as: UTF8.self)
    }

    let document = ConfigDocument(path: "/etc/consent-sync/fuzz.yaml", text: fileText)
    var loader = ConfigLoader(document: document, environment: environment)
    for key in ConfigSchema.keys {
        _ = loader.integer(key, default: 1, in: 0...1_000_000, unit: " of things")
        _ = loader.milliseconds(key, default: .milliseconds(5), in: 1...60_000)
        _ = loader.seconds(key, default: .seconds(5), in: 1...86_400)
        _ = loader.boolean(key, default: false)
        _ = loader.choice(key, default: "info", ["debug": 0, "info": 1, "error": 2])
        let (text, _) = loader.text(key, default: "", record: false)
        checkConnectionString(text)
        checkListenAddress(text)
    }
    for problem in loader.problems { _ = problem.description }
    for setting in loader.settings { _ = ConfigLoader.quote(setting.value) }
    checkConnectionString(fileText)
    return 0
}

/// Compare with how libpq reads a URI's user info (the text after `://` up to the first `@`,
/// unless a `/` comes first; the password after its first `:`), and require that password to be
/// gone from the redacted form (this found a password with a `?` left in clear; fixed).
private let libpqOracle = true

private func checkConnectionString(_ text: String) {
    if libpqOracle, ConfigConnectionString.isURI(text), let schemeEnd = text.range(of: "://")?.upperBound {
        let rest = text[schemeEnd...]
        if let stop = rest.firstIndex(where: { $0 == "@" || $0 == "/" }), rest[stop] == "@",
            let colon = rest[..<stop].firstIndex(of: ":"), rest.index(after: colon) < stop
        {
            let redacted = ConfigConnectionString.redacted(text) ?? text
            precondition(!redacted.hasPrefix(text[..<stop]), "libpq reads the password \(rest[rest.index(after: colon)..<stop].debugDescription) in \(text.debugDescription), but it is not redacted: \(redacted.debugDescription)")
        }
    }
    guard let redacted = ConfigConnectionString.redacted(text) else {
        precondition(ConfigConnectionString.passwords(in: text) == nil, "passwords found in a string that cannot be redacted")
        return
    }
    guard let again = ConfigConnectionString.passwords(in: redacted) else {
        preconditionFailure("the redacted form of \(text.debugDescription) cannot be taken apart: \(redacted.debugDescription)")
    }
    precondition(again.allSatisfy { $0 == "********" }, "redacting \(text.debugDescription) left \(again) in \(redacted.debugDescription)")
}

private func checkListenAddress(_ text: String) {
    guard case .success(let address) = ConfigListenAddress.parse(text) else { return }
    guard case .success(let again) = ConfigListenAddress.parse(address.description), again == address else {
        preconditionFailure("\(text.debugDescription) parsed, but its description \(address.description.debugDescription) does not parse back")
    }
}
