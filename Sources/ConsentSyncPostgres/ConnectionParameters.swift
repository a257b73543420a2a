import CLibPQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The keyword/value arrays for `PQconnectdbParams`, and the password hygiene around them.
struct ConnectionParameters {
    var keywords: [String]
    var values: [String]

    /// `[dbname, k1, k2, ..., client_encoding]` / `[connectionString, v1, v2, ..., UTF8]`: libpq expands
    /// only the first `dbname`, later keywords override earlier ones, and we always decode UTF-8.
    init(_ configuration: PostgresConfiguration) {
        self.keywords = ["dbname"] + configuration.overrideList.map(\.keyword) + ["client_encoding"]
        self.values = [configuration.connectionString] + configuration.overrideList.map(\.value) + ["UTF8"]
    }

    /// Calls `body` with NULL-terminated C arrays that stay valid for the whole call.
    func withCArrays<R>(_ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
        let keywords = self.keywords.map { strdup($0) } + [nil]
        let values = self.values.map { strdup($0) } + [nil]
        defer {
            keywords.forEach { free($0) }
            values.forEach { free($0) }
        }
        let constKeywords = keywords.map { UnsafePointer($0) }
        let constValues = values.map { UnsafePointer($0) }
        return constKeywords.withUnsafeBufferPointer { keywordBuffer in
            constValues.withUnsafeBufferPointer { valueBuffer in
                body(keywordBuffer.baseAddress!, valueBuffer.baseAddress!)
            }
        }
    }

    /// Passwords that must not appear in messages: those in the overrides, the connection
    /// string and `PGPASSWORD`.
    var passwords: [String] {
        var found: [String] = []
        for (keyword, value) in zip(self.keywords, self.values) where keyword == "password" {
            found.append(value)
        }
        if let parsed = Self.parse(self.values[0]).options {
            found += parsed.filter { $0.keyword == "password" }.map(\.value)
        }
        if let environment = getenv("PGPASSWORD") {
            found.append(String(cString: environment))
        }
        return found
    }

    /// Checks what libpq would otherwise report with parts of the input echoed back.
    static func validate(_ configuration: PostgresConfiguration) -> PostgresError? {
        let all = [configuration.connectionString] + configuration.overrideList.flatMap { [$0.keyword, $0.value] }
        if all.contains(where: { $0.utf8.contains(0) }) {
            return PostgresError(code: .invalidArgument, message: "the connection settings contain a NUL byte")
        }
        if let problem = Self.parse(configuration.connectionString).error {
            return PostgresError(code: .connectionFailed, message: "invalid connection string: \(problem)")
        }
        return nil
    }

    /// Parses a connection string the way libpq does (`PQconninfoParse`) when it is one; a plain
    /// database name or "" parses to no options. A parse error is returned redacted.
    static func parse(_ connectionString: String) -> (options: [(keyword: String, value: String)]?, error: String?) {
        guard Self.isConnectionString(connectionString) else { return ([], nil) }
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(connectionString, &errorMessage) else {
            defer { PQfreemem(errorMessage) }
            let message = errorMessage.map { trimmed(String(cString: $0)) } ?? "out of memory"
            return (nil, Self.redactQuoted(message))
        }
        defer { PQconninfoFree(options) }
        var result: [(keyword: String, value: String)] = []
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val {
                result.append((String(cString: keyword), String(cString: value)))
            }
            option += 1
        }
        return (result, nil)
    }

    /// libpq's rule (`recognized_connection_string`): a URI or something containing `=`.
    static func isConnectionString(_ text: String) -> Bool {
        text.hasPrefix("postgresql://") || text.hasPrefix("postgres://") || text.contains("=")
    }

    /// Replaces every occurrence of a secret (3 characters or longer) with `********`.
    static func redact(_ message: String, secrets: [String]) -> String {
        var message = message
        for secret in secrets where secret.count >= 3 {
            message = message.replacing(secret, with: "********")
        }
        return message
    }

    /// libpq's parse errors quote the offending token, which may be (part of) a password: keep
    /// quoted keywords (they name the problem), hide everything else that is quoted.
    static func redactQuoted(_ message: String) -> String {
        let keywords = Self.knownKeywords
        var output = ""
        var quoted: String?
        for character in message {
            if var token = quoted {
                if character == "\"" {
                    output += keywords.contains(token) || token == "=" ? "\"\(token)\"" : "\"…\""
                    quoted = nil
                } else {
                    token.append(character)
                    quoted = token
                }
            } else if character == "\"" {
                quoted = ""
            } else {
                output.append(character)
            }
        }
        if quoted != nil {
            output += "\"…"
        }
        return output
    }

    /// Every keyword libpq knows (`PQconndefaults`).
    static let knownKeywords: Set<String> = {
        guard let options = PQconndefaults() else { return [] }
        defer { PQconninfoFree(options) }
        var keywords: Set<String> = []
        var option = options
        while let keyword = option.pointee.keyword {
            keywords.insert(String(cString: keyword))
            option += 1
        }
        return keywords
    }()
}
