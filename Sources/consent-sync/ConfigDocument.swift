import SystemPackage
import Yams

/// One value as found, before it is checked against its key's type.
struct ConfigRawValue: Sendable {
    /// How YAML typed the value; environment variables are always `.text`.
    enum Kind: Sendable, Equatable {
        /// A string: quoted in YAML, or any environment variable.
        case text
        case integer(Int)
        case boolean(Bool)
        case float
        /// `key:` with nothing after it, `~` or `null`: the key is treated as not set.
        case null
    }

    var text: String
    var kind: Kind
    var origin: ConfigOrigin
}

/// The config file as read: every `section.key` value with its line, plus what is wrong with
/// the file's shape (syntax, unknown keys with a suggestion, a list where a value goes).
///
/// Parsed with Yams' `compose`, which keeps each node's line, rather than decoded, so that
/// errors can point at the line and unknown keys are noticed instead of ignored.
struct ConfigDocument: Sendable {
    let path: String
    private(set) var values: [String: ConfigRawValue] = [:]
    private(set) var problems: [ConfigurationError.Problem] = []

    /// The largest config file read; anything bigger is not a config file.
    static let maximumSize = 1 << 20

    /// Reads and parses `path`; problems are collected, not thrown.
    init(path: String) {
        let bytes: [UInt8]
        do {
            bytes = try readFile(path, limit: Self.maximumSize)
        } catch {
            self.init(path: path, problem: "cannot read the file: \(error)")
            return
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            self.init(path: path, problem: "the file is not UTF-8 text")
            return
        }
        self.init(path: path, text: text)
    }

    private init(path: String, problem: String) {
        self.path = path
        self.problems = [.init(key: nil, origin: .file(path: path, line: nil), reason: problem)]
    }

    /// Parses `text` as if read from `path`.
    init(path: String, text: String) {
        self.path = path
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            self.problems.append(Self.problem(for: error, path: path))
            return
        } catch {
            self.problems.append(.init(key: nil, origin: .file(path: path, line: nil), reason: "not valid YAML"))
            return
        }
        guard let root else { return }  // empty, or only comments: every key keeps its default
        if Self.isNull(root) { return }
        guard case .mapping(let sections) = root else {
            self.fail(nil, root, "the top level must be sections (database:, relay:, retry:, log:, ops:), found \(Self.describe(root))")
            return
        }
        for (sectionNode, sectionValue) in sections {
            guard case .scalar(let sectionName) = sectionNode else {
                self.fail(nil, sectionNode, "a key must be a name, found \(Self.describe(sectionNode))")
                continue
            }
            let section = sectionName.string
            guard ConfigSchema.sections.contains(section) else {
                self.unknown(section, at: sectionNode)
                continue
            }
            if Self.isNull(sectionValue) { continue }
            guard case .mapping(let entries) = sectionValue else {
                self.fail(section, sectionValue, "must be a section of keys (\(Self.keys(in: section))), found \(Self.describe(sectionValue))")
                continue
            }
            for (keyNode, valueNode) in entries {
                guard case .scalar(let keyName) = keyNode else {
                    self.fail(section, keyNode, "a key must be a name, found \(Self.describe(keyNode))")
                    continue
                }
                let key = section + "." + keyName.string
                guard ConfigSchema.keySet.contains(key) else {
                    self.unknown(key, at: keyNode)
                    continue
                }
                guard case .scalar(let scalar) = valueNode else {
                    self.fail(key, valueNode, "must be a single value, found \(Self.describe(valueNode))")
                    continue
                }
                let origin = ConfigOrigin.file(path: path, line: (scalar.mark ?? keyName.mark)?.line)
                self.values[key] = ConfigRawValue(text: scalar.string, kind: Self.kind(of: valueNode, scalar), origin: origin)
            }
        }
    }

    private static func kind(of node: Node, _ scalar: Node.Scalar) -> ConfigRawValue.Kind {
        guard scalar.style == .plain || scalar.style == .any else { return .text }
        switch node.tag.rawValue {
        case Tag.Name.null.rawValue: return .null
        case Tag.Name.int.rawValue: return node.int.map { .integer($0) } ?? .text
        case Tag.Name.bool.rawValue: return node.bool.map { .boolean($0) } ?? .text
        case Tag.Name.float.rawValue: return .float
        default: return .text
        }
    }

    private static func isNull(_ node: Node) -> Bool {
        if case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any {
            return node.tag.rawValue == Tag.Name.null.rawValue
        }
        return false
    }

    private static func describe(_ node: Node) -> String {
        switch node {
        case .scalar: "a single value"
        case .mapping: "a section (keys and values)"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    private static func keys(in section: String) -> String {
        ConfigSchema.keys.filter { $0.hasPrefix(section + ".") }.map { String($0.dropFirst(section.count + 1)) }.joined(separator: ", ")
    }

    private mutating func fail(_ key: String?, _ node: Node, _ reason: String) {
        self.problems.append(.init(key: key, origin: .file(path: self.path, line: node.mark?.line), reason: reason))
    }

    private mutating func unknown(_ key: String, at node: Node) {
        var reason = "unknown key"
        if key.lowercased().contains("password") && key != "database.password_file" {
            reason += "; passwords are read from files only: use database.password_file or the systemd credential db-password"
        } else if let suggestion = ConfigSchema.suggestion(forKey: key) {
            reason += "; did you mean '\(suggestion)'?"
        } else {
            reason += "; known sections: \(ConfigSchema.sections.joined(separator: ", "))"
        }
        self.problems.append(.init(key: key, origin: .file(path: self.path, line: node.mark?.line), reason: reason))
    }

    /// Line and problem only: Yams' own description quotes the offending line of the file,
    /// which may hold a password.
    private static func problem(for error: YamlError, path: String) -> ConfigurationError.Problem {
        func located(_ mark: Mark, _ text: String) -> ConfigurationError.Problem {
            .init(key: nil, origin: .file(path: path, line: mark.line), reason: "not valid YAML: \(text) (column \(mark.column))")
        }
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            guard let context else { return located(mark, problem) }
            let started = context.mark.line == mark.line ? "" : " (from line \(context.mark.line))"
            return located(mark, "\(context.text)\(started): \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = duplicates.sorted().map { "'\($0)'" }.joined(separator: ", ")
            return located(context.mark, "the same key appears twice in one section: \(names)")
        case .reader(let problem, _, _, _):
            return .init(key: nil, origin: .file(path: path, line: nil), reason: "not valid YAML: \(problem)")
        default:
            return .init(key: nil, origin: .file(path: path, line: nil), reason: "not valid YAML")
        }
    }
}

/// Reads a whole file (at most `limit` bytes, so `/dev/zero` cannot hang us); throws `Errno`
/// or ``FileTooLarge``.
func readFile(_ path: String, limit: Int) throws -> [UInt8] {
    let descriptor = try FileDescriptor.open(FilePath(path), .readOnly)
    return try descriptor.closeAfter {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try descriptor.read(into: $0, retryOnInterrupt: true) }
            if count == 0 { return bytes }
            bytes += buffer[0..<count]
            if bytes.count > limit { throw FileTooLarge(limit: limit) }
        }
    }
}

/// A file longer than makes sense for what it should hold.
struct FileTooLarge: Error, CustomStringConvertible {
    var limit: Int
    var description: String { "the file is larger than \(limit) bytes" }
}
