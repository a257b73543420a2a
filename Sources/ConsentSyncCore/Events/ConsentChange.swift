import Foundation

/// One captured change of a consent row, as stored in the outbox (`consent_sync.changes`).
public struct ConsentChange: Sendable, Equatable {
    public enum Operation: String, Sendable, Equatable {
        case insert = "INSERT"
        case update = "UPDATE"
        case delete = "DELETE"
        /// The current state of a row, sent by `consent-sync resync` (`consent.snapshot`).
        case snapshot = "SNAPSHOT"
        /// `consent-sync forget`: every recipient is asked to erase the subject (`subject.erased`).
        case erase = "ERASE"
    }

    /// Outbox id: assigned at insert, increasing in commit order for any one consent row.
    public var id: Int64
    /// The CloudEvents `id`: the same for every subscriber and every retry.
    public var eventID: String
    /// `schema.table` the change was captured from.
    public var table: String
    public var operation: Operation
    /// `consent.granted`, `consent.denied`, `consent.withdrawn`, `consent.deleted`, …
    public var eventType: String
    public var subject: String
    public var purpose: String
    public var status: String?
    public var previousStatus: String?
    /// Where the change came from (channel, application), if the table records it.
    public var source: String?
    public var changedAt: Date
    /// The allowlisted columns of the row as a JSON object text, if any were configured.
    public var attributesJSON: String?
    /// Why this change cannot be sent (a NULL subject id, an unmapped status, …): its
    /// deliveries are recorded as dead with this reason instead.
    public var problem: String?

    public init(
        id: Int64,
        eventID: String,
        table: String,
        operation: Operation,
        eventType: String,
        subject: String,
        purpose: String,
        status: String?,
        previousStatus: String?,
        source: String?,
        changedAt: Date,
        attributesJSON: String? = nil,
        problem: String? = nil
    ) {
        self.id = id
        self.eventID = eventID
        self.table = table
        self.operation = operation
        self.eventType = eventType
        self.subject = subject
        self.purpose = purpose
        self.status = status
        self.previousStatus = previousStatus
        self.source = source
        self.changedAt = changedAt
        self.attributesJSON = attributesJSON
        self.problem = problem
    }

    /// The CloudEvents `sequence` value: the outbox id, zero-padded so that it compares
    /// correctly as a string. It grows with every change of one subject and purpose; gaps are normal.
    public var sequence: String {
        let digits = String(id)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }
}

/// The consent states the default table accepts.
public enum ConsentStatus: String, Sendable, CaseIterable {
    case granted
    case denied
    case withdrawn
}

extension ConsentChange {
    /// This change as one subscriber may see it: only the attributes in `fields` (all when
    /// `nil`), and the subject id replaced by its pseudonym when `pseudonymKey` is set.
    public func minimised(fields: [String]?, pseudonymKey: PseudonymKey?) -> ConsentChange {
        var view = self
        if let pseudonymKey {
            view.subject = pseudonymKey.pseudonym(for: subject)
        }
        if let fields, let attributesJSON {
            view.attributesJSON = Self.keeping(fields, of: attributesJSON)
        }
        return view
    }

    /// The members of a JSON object named in `fields`, as a JSON object (keys sorted);
    /// `nil` when none is left or the text is not an object.
    static func keeping(_ fields: [String], of json: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed]) as? [String: Any] else {
            return nil
        }
        let kept = object.filter { fields.contains($0.key) }
        guard !kept.isEmpty, let data = try? JSONSerialization.data(withJSONObject: kept, options: [.sortedKeys, .fragmentsAllowed]) else {
            return nil
        }
        return String(decoding: data, as: UTF8.self)
    }
}
