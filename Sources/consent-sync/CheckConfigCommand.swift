import ArgumentParser

/// `consent-sync check-config`: validates the configuration and shows what the daemon would
/// use, without connecting to the database.
struct CheckConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check the configuration and print every setting, its value and where it came from.",
        discussion: """
            Reads the file and the CONSENT_SYNC_* environment exactly as the daemon does and never \
            connects to the database. Passwords and the contents of secret files are not printed. \
            Exits 0 when the configuration is valid, 78 (EX_CONFIG) with every problem otherwise.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try await loadConfiguration(options)
        print(configuration.redact(configuration.report()), terminator: "")
    }
}

extension AppConfiguration {
    /// The effective configuration as an aligned table: key, value, source.
    func report() -> String {
        var text = "# consent-sync configuration; file: \(self.file ?? "none (defaults and environment only)")\n"
        let rows = [("key", "value", "source")] + self.settings.map { ($0.key, $0.value, $0.origin.description) }
        let keyWidth = rows.map(\.0.count).max() ?? 0
        let valueWidth = rows.map(\.1.count).max() ?? 0
        for (key, value, source) in rows {
            text += key.padding(keyWidth) + "  " + value.padding(valueWidth) + "  " + source + "\n"
        }
        for warning in self.warnings {
            text += "warning: \(warning)\n"
        }
        return text + "configuration OK\n"
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String {
        self.count >= width ? self : self + String(repeating: " ", count: width - self.count)
    }
}
