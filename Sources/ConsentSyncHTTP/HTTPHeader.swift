/// One header field of a request or response, in wire order.
public struct HTTPHeader: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

extension HTTPHeader: CustomStringConvertible {
    /// The name only: header values may be signatures or credentials.
    public var description: String { "\(self.name): <redacted>" }
}

extension Sequence<HTTPHeader> {
    /// The value of the first header called `name`, compared case-insensitively.
    func firstValue(named name: String) -> String? {
        self.first { $0.name.equalsIgnoringASCIICase(name) }?.value
    }
}

extension String {
    func equalsIgnoringASCIICase(_ other: String) -> Bool {
        let lhs = self.utf8
        let rhs = other.utf8
        guard lhs.count == rhs.count else { return false }
        return zip(lhs, rhs).allSatisfy { asciiLowercased($0) == asciiLowercased($1) }
    }
}

private func asciiLowercased(_ byte: UInt8) -> UInt8 {
    (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte + 32 : byte
}
