extension Migrations {
    /// Length limits on the default consent table, so that an absurd value is refused with
    /// the column named instead of failing deep in an index (found by the bad-input suite).
    static let v5 = #"""
    ALTER TABLE consent_sync.consents
        ADD CONSTRAINT consents_subject_id_length CHECK (length(subject_id) <= 512),
        ADD CONSTRAINT consents_purpose_length CHECK (length(purpose) <= 128),
        ADD CONSTRAINT consents_source_length CHECK (length(source) <= 512);
    """#
}
